//! Restoring a snapshot: the manifest is checked, then turned with the
//! packs' bytes into a tar stream that [`crate::files::unpack::unpack`]
//! writes beneath the workspace (files in parallel, never through a link).
//!
//! The stream holds the directories (parents first, writable by their
//! owner for now), then the files in the order their frames arrive — small
//! contents decompressed and checked whole, then written once per file that
//! has them; large ones streamed and checked as they go, written once and
//! copied to the other files that have them after the unpack — then empty
//! files, then links. Last, times are set to the nanosecond and directories
//! get their own modes, deepest first.

use std::collections::{BTreeMap, HashSet};
use std::fs::{FileTimes, Permissions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use std::os::unix::fs::OpenOptionsExt as _;
use tar::{Builder, EntryType, Header};
use viaduct_proto::v1::{SnapshotEntry, SnapshotManifest, snapshot_entry::Kind};

use super::stream::{Checked, Frame, Packs, PipeWriter, pipe};
use super::{NS, RESTORE_BITS, SMALL, as_path, empty_hash, from_hex, shown};

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Directories made.
    pub dirs: u64,
    /// Files written.
    pub files: u64,
    /// Links made.
    pub symlinks: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Bytes of the packs received.
    pub pack_bytes: u64,
}

/// Restores `manifest` into the empty directory `workspace` from the
/// packs' bytes, which arrive in order of their index in `manifest.packs`
/// (pack 0 whole, then pack 1 whole, …; packs no entry uses are not sent):
/// `chunks()` yields (pack index, bytes) in that order, `None` at the end.
///
/// The manifest came over the network: a path that is absolute, has `..`
/// or lies beneath anything but a directory of the manifest, a pack index
/// out of range, a frame the pack does not hold or whose contents are not
/// what the entry says, fail the restore. Every path is resolved beneath
/// the workspace by the kernel. On failure the workspace holds part of the
/// snapshot: remove it.
pub fn restore(
    workspace: &std::path::Path,
    manifest: &SnapshotManifest,
    chunks: impl FnMut() -> Result<Option<(u32, Vec<u8>)>, String>,
) -> Result<RestoreStats, String> {
    let plan = Plan::of(manifest)?;
    let (writer, reader) = pipe();
    let mut tar = Builder::new(writer);
    let (built, unpacked) = std::thread::scope(|s| {
        let unpacking = s.spawn(move || crate::files::unpack::unpack(workspace, reader));
        let built = build(&mut tar, &plan, Packs::new(chunks));
        let built = match built {
            Ok(stats) => end(tar).map(|()| stats),
            Err(e) => {
                // The unpacker must see the stream break, not end.
                tar.get_mut().abort();
                let broken = tar.get_ref().broken;
                drop(tar);
                Err((e, broken))
            }
        };
        let unpacked = unpacking.join().unwrap_or_else(|_| Err("the unpacking thread panicked".to_string()));
        (built, unpacked)
    });
    let stats = match (built, unpacked) {
        (Ok(stats), Ok(_)) => stats,
        (Err((_, true)), Err(e)) | (Ok(_), Err(e)) | (Err((e, _)), _) => return Err(e),
    };
    let root = open_root(workspace)?;
    copy_duplicates(&root, &plan)?;
    set_times(&root, &plan)?;
    set_dirs(&root, &plan)?;
    Ok(stats)
}

/// Finishes the tar stream and the pipe.
fn end(tar: Builder<PipeWriter>) -> Result<(), (String, bool)> {
    let failed = |e: io::Error| (format!("cannot finish the restore stream: {e}"), true);
    tar.into_inner().map_err(failed)?.end().map_err(failed)
}

/// Files with the same contents, stored in one frame.
struct Shared<'m> {
    pack: u32,
    offset: u64,
    length: u64,
    size: u64,
    hash: [u8; 32],
    files: Vec<&'m SnapshotEntry>,
}

/// A checked manifest, in the order of the restore.
struct Plan<'m> {
    dirs: Vec<&'m SnapshotEntry>,
    /// By pack and offset.
    frames: Vec<Shared<'m>>,
    empty: Vec<&'m SnapshotEntry>,
    links: Vec<&'m SnapshotEntry>,
}

impl<'m> Plan<'m> {
    /// Checks `manifest` and sorts its entries.
    fn of(manifest: &'m SnapshotManifest) -> Result<Self, String> {
        let mut plan = Plan { dirs: Vec::new(), frames: Vec::new(), empty: Vec::new(), links: Vec::new() };
        let mut frames = BTreeMap::new();
        let (mut seen, mut dirs) = (HashSet::new(), HashSet::new());
        for e in &manifest.entries {
            check_path(&e.path, &dirs)?;
            if !seen.insert(e.path.as_slice()) {
                return Err(bad(e, "is listed twice"));
            }
            match Kind::try_from(e.kind) {
                Ok(Kind::Directory) => {
                    dirs.insert(e.path.as_slice());
                    plan.dirs.push(e);
                }
                Ok(Kind::Symlink) if e.target.is_empty() || e.target.contains(&0) => {
                    return Err(bad(e, "is a link to no valid target"));
                }
                Ok(Kind::Symlink) => plan.links.push(e),
                Ok(Kind::File) => plan.file(e, manifest.packs.len(), &mut frames)?,
                Err(_) => return Err(bad(e, &format!("has an unknown kind {}", e.kind))),
            }
        }
        plan.frames = frames.into_values().collect();
        plan.check_overlaps()?;
        Ok(plan)
    }

    /// A file: empty, or in a frame (shared with the files with the same contents).
    fn file(
        &mut self,
        e: &'m SnapshotEntry,
        packs: usize,
        frames: &mut BTreeMap<(u32, u64), Shared<'m>>,
    ) -> Result<(), String> {
        let hash = from_hex(&e.blake3).ok_or_else(|| bad(e, "has no valid blake3"))?;
        if e.size == 0 {
            if hash != empty_hash() {
                return Err(bad(e, "is empty but its blake3 is not that of nothing"));
            }
            self.empty.push(e);
            return Ok(());
        }
        if e.pack as usize >= packs {
            return Err(bad(e, &format!("is in pack {} of {packs}", e.pack)));
        }
        if e.length == 0 || e.offset.checked_add(e.length).is_none() {
            return Err(bad(e, "has no valid frame"));
        }
        let shared = frames.entry((e.pack, e.offset)).or_insert_with(|| Shared {
            pack: e.pack,
            offset: e.offset,
            length: e.length,
            size: e.size,
            hash,
            files: Vec::new(),
        });
        if (shared.length, shared.size, shared.hash) != (e.length, e.size, hash) {
            return Err(bad(e, "shares a frame with a file of other contents"));
        }
        shared.files.push(e);
        Ok(())
    }

    /// Frames of one pack must not overlap (they are read in one pass).
    fn check_overlaps(&self) -> Result<(), String> {
        for pair in self.frames.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.pack == b.pack && a.offset + a.length > b.offset {
                return Err(format!("the frames of {} and {} overlap", name(&a.files), name(&b.files)));
            }
        }
        Ok(())
    }
}

/// The first path of files with the same contents, for messages.
fn name(files: &[&SnapshotEntry]) -> String {
    files.first().map(|e| shown(&e.path)).unwrap_or_default()
}

fn bad(e: &SnapshotEntry, why: &str) -> String {
    format!("bad snapshot entry {:?}: it {why}", shown(&e.path))
}

/// A path of the manifest: relative, `/`-separated, without empty, `.`
/// or `..` parts or NUL bytes, beneath a directory listed before it.
fn check_path(path: &[u8], dirs: &HashSet<&[u8]>) -> Result<(), String> {
    let bad = |why: &str| format!("bad snapshot entry {:?}: {why}", shown(path));
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    if path.contains(&0) {
        return Err(bad("the path has a NUL byte"));
    }
    if path.split(|&b| b == b'/').any(|part| matches!(part, b"" | b"." | b"..")) {
        return Err(bad("the path is absolute or has an empty, `.` or `..` part"));
    }
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) if !dirs.contains(&path[..at]) => Err(bad("it is not beneath a directory of the snapshot")),
        _ => Ok(()),
    }
}

/// Writes the tar stream of `plan`.
fn build<F>(tar: &mut Builder<PipeWriter>, plan: &Plan<'_>, mut packs: Packs<F>) -> Result<RestoreStats, String>
where
    F: FnMut() -> Result<Option<(u32, Vec<u8>)>, String>,
{
    let mut stats = RestoreStats::default();
    for d in &plan.dirs {
        // Writable until the end, whatever its own mode.
        let head = header(EntryType::Directory, d.mode | 0o700, d.mtime_ns, 0);
        append(tar, head, d, io::empty())?;
        stats.dirs += 1;
    }
    for frame in &plan.frames {
        emit_frame(tar, frame, &mut packs)?;
        stats.files += frame.files.len() as u64;
        stats.bytes = stats.bytes.saturating_add(frame.size.saturating_mul(frame.files.len() as u64));
    }
    for e in &plan.empty {
        append(tar, header(EntryType::Regular, e.mode, e.mtime_ns, 0), e, io::empty())?;
        stats.files += 1;
    }
    for l in &plan.links {
        link(tar, l)?;
        stats.symlinks += 1;
    }
    stats.pack_bytes = packs.received;
    Ok(stats)
}

/// The files of one frame: decompressed as the frame arrives and checked.
fn emit_frame<F>(tar: &mut Builder<PipeWriter>, frame: &Shared<'_>, packs: &mut Packs<F>) -> Result<(), String>
where
    F: FnMut() -> Result<Option<(u32, Vec<u8>)>, String>,
{
    let path = name(&frame.files);
    packs.seek(frame.pack, frame.offset, &path)?;
    let reader = Frame { packs, pack: frame.pack, left: frame.length, path: &path };
    let decoder = zstd::stream::read::Decoder::new(reader).map_err(|e| format!("cannot decompress {path}: {e}"))?;
    let mut checked =
        Checked { inner: decoder, left: frame.size, hasher: blake3::Hasher::new(), expect: frame.hash, path: &path };
    if frame.size > SMALL as u64 {
        // Copied to the others after the unpack: readable until then.
        let first = frame.files.first().ok_or_else(|| format!("no file for the frame of {path}"))?;
        let more = if frame.files.len() > 1 { 0o400 } else { 0 };
        let head = header(EntryType::Regular, first.mode | more, first.mtime_ns, frame.size);
        return append(tar, head, first, checked);
    }
    let mut data = Vec::with_capacity(usize::try_from(frame.size).unwrap_or(0));
    checked.read_to_end(&mut data).map_err(|e| format!("cannot restore {path}: {e}"))?;
    for e in &frame.files {
        append(tar, header(EntryType::Regular, e.mode, e.mtime_ns, frame.size), e, data.as_slice())?;
    }
    Ok(())
}

/// A tar header (the path is set by [`append`]).
fn header(kind: EntryType, mode: u32, mtime_ns: i64, size: u64) -> Header {
    let mut head = Header::new_gnu();
    head.set_entry_type(kind);
    head.set_mode(mode & RESTORE_BITS);
    head.set_mtime(u64::try_from(mtime_ns.div_euclid(NS)).unwrap_or(0));
    head.set_size(size);
    head
}

fn append(tar: &mut Builder<PipeWriter>, mut head: Header, e: &SnapshotEntry, data: impl Read) -> Result<(), String> {
    tar.append_data(&mut head, as_path(&e.path), data)
        .map_err(|err| format!("cannot restore {}: {err}", shown(&e.path)))
}

/// A link, its target exactly as recorded (a long one in a GNU long-link
/// entry before it).
fn link(tar: &mut Builder<PipeWriter>, l: &SnapshotEntry) -> Result<(), String> {
    let mut head = header(EntryType::Symlink, l.mode, l.mtime_ns, 0);
    let failed = |err: io::Error| format!("cannot restore {}: {err}", shown(&l.path));
    if l.target.len() < head.as_old().linkname.len() {
        head.set_link_name_literal(&l.target).map_err(failed)?;
    } else {
        let mut long = Header::new_gnu();
        let tag = b"././@LongLink";
        long.as_old_mut().name[..tag.len()].copy_from_slice(tag);
        long.set_mode(0o644);
        long.set_entry_type(EntryType::GNULongLink);
        long.set_size(l.target.len() as u64 + 1);
        long.set_cksum();
        tar.append(&long, l.target.as_slice().chain(&[0u8][..])).map_err(failed)?;
    }
    append(tar, head, l, io::empty())
}

/// The workspace, not through a link at its own name.
fn open_root(workspace: &std::path::Path) -> Result<Dir, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(workspace)
        .map(Dir::from_std_file)
        .map_err(|e| format!("cannot open the workspace {}: {e}", workspace.display()))
}

/// Gives the other files with the contents of a large frame a copy of the
/// first (written once by the unpack), then the first its own mode.
fn copy_duplicates(root: &Dir, plan: &Plan<'_>) -> Result<(), String> {
    let shared = plan.frames.iter().filter(|f| f.size > SMALL as u64 && f.files.len() > 1);
    for frame in shared {
        let Some((first, others)) = frame.files.split_first() else { continue };
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(libc::O_NOFOLLOW);
        let mut source = root.open_with(as_path(&first.path), &options).map_err(|e| cannot(first, &e))?.into_std();
        for e in others {
            copy_one(root, &mut source, e, frame.size)?;
        }
        source.set_permissions(Permissions::from_mode(first.mode & RESTORE_BITS)).map_err(|e| cannot(first, &e))?;
    }
    Ok(())
}

/// Creates the file of `e` anew (never through a link) with what `source` holds.
fn copy_one(root: &Dir, source: &mut std::fs::File, e: &SnapshotEntry, size: u64) -> Result<(), String> {
    source.rewind().map_err(|err| cannot(e, &err))?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    let mut file = root.open_with(as_path(&e.path), &options).map_err(|err| cannot(e, &err))?.into_std();
    let copied = io::copy(source, &mut file).map_err(|err| cannot(e, &err))?;
    if copied != size {
        return Err(format!("cannot restore {}: copied {copied} bytes of {size}", shown(&e.path)));
    }
    file.set_permissions(Permissions::from_mode(e.mode & RESTORE_BITS)).map_err(|err| cannot(e, &err))
}

/// Sets the times of files and links to the nanosecond (by their
/// parent directory, each opened once), never following a link.
fn set_times(root: &Dir, plan: &Plan<'_>) -> Result<(), String> {
    let mut leaves: Vec<&SnapshotEntry> =
        plan.frames.iter().flat_map(|f| f.files.iter().copied()).chain(plan.empty.iter().copied()).collect();
    leaves.extend(plan.links.iter().copied());
    leaves.sort_by(|a, b| split(&a.path).0.cmp(split(&b.path).0));
    let mut open: Option<(&[u8], Dir)> = None;
    for e in leaves {
        let (parent, file) = split(&e.path);
        let dir = match open.take() {
            Some((p, dir)) if p == parent => dir,
            _ => parent_dir(root, parent).map_err(|err| cannot(e, &err))?,
        };
        let time = timespec(e.mtime_ns);
        utimensat(&dir, as_path(file), &time, &time, UtimensatFlags::NoFollowSymlink)
            .map_err(|err| cannot(e, &io::Error::from(err)))?;
        open = Some((parent, dir));
    }
    Ok(())
}

/// Gives directories their own modes and times, deepest first (so that
/// the way down stays open and nothing touches them afterwards).
fn set_dirs(root: &Dir, plan: &Plan<'_>) -> Result<(), String> {
    let mut dirs = plan.dirs.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.path.iter().filter(|&&b| b == b'/').count()));
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK);
    for d in dirs {
        let dir = root.open_with(as_path(&d.path), &options).map_err(|e| cannot(d, &e))?.into_std();
        dir.set_permissions(Permissions::from_mode(d.mode & RESTORE_BITS)).map_err(|e| cannot(d, &e))?;
        let time = system_time(d.mtime_ns);
        dir.set_times(FileTimes::new().set_modified(time).set_accessed(time)).map_err(|e| cannot(d, &e))?;
    }
    Ok(())
}

/// A path's parent directory (empty: the workspace) and name.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[], path),
    }
}

/// The directory `parent` beneath `root`.
fn parent_dir(root: &Dir, parent: &[u8]) -> io::Result<Dir> {
    if parent.is_empty() { root.try_clone() } else { root.open_dir(as_path(parent)) }
}

fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(NS), ns.rem_euclid(NS))
}

fn system_time(ns: i64) -> SystemTime {
    let at = Duration::from_nanos(ns.unsigned_abs());
    let time = if ns >= 0 { SystemTime::UNIX_EPOCH.checked_add(at) } else { SystemTime::UNIX_EPOCH.checked_sub(at) };
    time.unwrap_or(SystemTime::UNIX_EPOCH)
}

fn cannot(e: &SnapshotEntry, err: &io::Error) -> String {
    format!("cannot restore {}: {err}", shown(&e.path))
}
