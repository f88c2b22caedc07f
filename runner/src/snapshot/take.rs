//! Taking a snapshot: the walk, the files read again, the new frames.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use aho_corasick::AhoCorasick;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat};
use viaduct_proto::v1::{SnapshotEntry, SnapshotManifest, snapshot_entry};

use super::known::{Extent, Recorded, StatKey};
use super::walk::{self, Found, Kind};
use super::{Known, LEVEL, MIN_SECRET, MODE_BITS, READ_BUF, Refused, SMALL, empty_hash, now_ns, shown, to_hex, to_ns};

/// What taking a snapshot did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TakeStats {
    /// Files recorded.
    pub files: u64,
    /// Files read and hashed (their stat key changed, or was not trusted).
    pub hashed: u64,
    /// Files whose contents were new: one frame each in the pack.
    pub new_files: u64,
    /// Uncompressed bytes of those.
    pub new_bytes: u64,
    /// Bytes written to the pack.
    pub pack_bytes: u64,
    /// Sockets, fifos and devices left out.
    pub skipped_special: u64,
}

/// A snapshot taken.
#[derive(Debug, Clone)]
pub struct Taken {
    /// Its `packs`, `entries` and `total_size` (the caller fills the rest).
    pub manifest: SnapshotManifest,
    /// What the next snapshot starts from; see [`Known::pack_stored`].
    pub known: Known,
    /// What it cost.
    pub stats: TakeStats,
}

/// Takes a snapshot of `workspace`: walks it (never following links;
/// sockets, fifos and devices are left out and counted), reads again only
/// the files whose stat key changed since `known`, writes the zstd frames
/// of the contents `known` does not have into `pack` (streamed by the
/// caller), and returns the manifest — its `packs` name the known packs
/// its entries use, plus `""` for `pack` when anything was written to it —
/// and what the next snapshot starts from (where `""` is this pack until
/// [`Known::pack_stored`] names it).
///
/// `secrets` are literal secret values (shorter than 4 bytes: ignored): a
/// file whose new or changed contents hold one, or an entry whose name or
/// link target does, refuses the whole snapshot. No byte of a secret is
/// written to `pack` (the caller may still have to discard what was).
pub fn take(workspace: &Path, known: &Known, secrets: &[String], pack: &mut dyn Write) -> Result<Taken, Refused> {
    let mut root = walk::open_root(workspace).map_err(Refused::Error)?;
    let mut taker = Taker::new(known, secrets, pack)?;
    taker.owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::symlink_metadata(workspace).map_err(|e| Refused::Error(format!("cannot stat the workspace: {e}")))?,
    );
    walk::walk(&mut root, &mut |found| taker.visit(&found))?;
    taker.finish()
}

/// Counts what is written to the pack.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Holds back the last bytes read until the next read shows that no
/// secret ends in them: what it passes on is free of secrets, even one
/// split across reads.
struct Gate<'s> {
    secrets: Option<&'s AhoCorasick>,
    /// The longest secret's length less one.
    hold: usize,
    pending: Vec<u8>,
}

impl<'s> Gate<'s> {
    fn new(secrets: Option<&'s AhoCorasick>, hold: usize) -> Self {
        Self { secrets, hold, pending: Vec::new() }
    }

    /// Takes the next bytes read; passes on to `out` those no secret can
    /// be in. `Ok(false)`: a secret is in what was read.
    fn push(&mut self, chunk: &[u8], out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<bool> {
        let Some(secrets) = self.secrets else {
            out(chunk)?;
            return Ok(true);
        };
        self.pending.extend_from_slice(chunk);
        if secrets.is_match(&self.pending) {
            return Ok(false);
        }
        let release = self.pending.len().saturating_sub(self.hold);
        out(&self.pending[..release])?;
        self.pending.drain(..release);
        Ok(true)
    }

    /// At the end: passes on what was held back.
    fn end(&mut self, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        out(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

/// A snapshot being taken.
struct Taker<'a> {
    known: &'a Known,
    /// What the next snapshot will know: the stored contents of `known`,
    /// the new ones, and the files of this walk.
    next: Known,
    /// This pack's index in `next.packs`, once something is written to it.
    this_pack: Option<u32>,
    entries: Vec<SnapshotEntry>,
    stats: TakeStats,
    secrets: Option<AhoCorasick>,
    hold: usize,
    pack: Counting<'a>,
    compressor: zstd::bulk::Compressor<'static>,
    /// When the walk began (see [`super::trusted`]).
    start_ns: i64,
    buf: Vec<u8>,
    small: Vec<u8>,
    /// Who owns the workspace: a hard link to a file of another user is
    /// not read (a host job could link a file only the runner may read).
    owner: u32,
}

/// A file's contents: blake3, size, and its frame (none when empty).
type Contents = ([u8; 32], u64, Option<Extent>);

impl<'a> Taker<'a> {
    fn new(known: &'a Known, secrets: &[String], pack: &'a mut dyn Write) -> Result<Self, Refused> {
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).filter(|s| s.len() >= MIN_SECRET).collect();
        let hold = secrets.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
        let secrets = if secrets.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&secrets).map_err(|e| Refused::Error(format!("cannot search for secrets: {e}")))?)
        };
        let compressor =
            zstd::bulk::Compressor::new(LEVEL).map_err(|e| Refused::Error(format!("cannot start compressing: {e}")))?;
        Ok(Self {
            known,
            next: stored_part(known),
            this_pack: None,
            entries: Vec::new(),
            stats: TakeStats::default(),
            secrets,
            hold,
            pack: Counting { inner: pack, written: 0 },
            compressor,
            start_ns: now_ns(),
            buf: vec![0; READ_BUF],
            small: Vec::new(),
            owner: 0,
        })
    }

    /// Records one entry the walk found.
    fn visit(&mut self, f: &Found<'_>) -> Result<(), Refused> {
        if self.has_secret(f.name.to_bytes()) {
            let parent = f.path.len().saturating_sub(f.name.to_bytes().len() + 1);
            return Err(Refused::Secret { path: walk::dir_shown(&f.path[..parent]) });
        }
        let entry = match walk::kind(f.stat) {
            Kind::Dir => Some(self.plain(f, snapshot_entry::Kind::Directory)),
            Kind::Link => Some(self.link(f)?),
            Kind::File => self.file(f)?,
            Kind::Special => {
                self.stats.skipped_special += 1;
                None
            }
        };
        self.entries.extend(entry);
        Ok(())
    }

    fn has_secret(&self, bytes: &[u8]) -> bool {
        self.secrets.as_ref().is_some_and(|s| s.is_match(bytes))
    }

    /// An entry with its path, kind, mode and time.
    fn plain(&self, f: &Found<'_>, kind: snapshot_entry::Kind) -> SnapshotEntry {
        SnapshotEntry {
            path: f.path.to_vec(),
            kind: kind as i32,
            mode: f.stat.st_mode & MODE_BITS,
            mtime_ns: to_ns(f.stat.st_mtime, f.stat.st_mtime_nsec),
            ..SnapshotEntry::default()
        }
    }

    /// A symbolic link, with its target as written.
    fn link(&self, f: &Found<'_>) -> Result<SnapshotEntry, Refused> {
        let target = nix::fcntl::readlinkat(f.dir.as_fd(), f.name)
            .map_err(|e| Refused::Error(format!("cannot read the link {}: {e}", shown(f.path))))?;
        if self.has_secret(target.as_bytes()) {
            return Err(Refused::Secret { path: shown(f.path) });
        }
        Ok(SnapshotEntry { target: target.into_vec(), ..self.plain(f, snapshot_entry::Kind::Symlink) })
    }

    /// A regular file: as known when its stat key is, else read again.
    /// `None` when it vanished or is no longer a regular file.
    fn file(&mut self, f: &Found<'_>) -> Result<Option<SnapshotEntry>, Refused> {
        let key = StatKey::of(f.stat);
        let (contents, stat) = match self.unchanged(f.path, key) {
            Some(contents) => (contents, Some(key)),
            None => {
                let mut file = match open(f)? {
                    Opened::File(file) => file,
                    Opened::Gone => return Ok(None),
                    Opened::Special => {
                        self.stats.skipped_special += 1;
                        return Ok(None);
                    }
                };
                let stat =
                    fstat(file.as_fd()).map_err(|e| Refused::Error(format!("cannot stat {}: {e}", shown(f.path))))?;
                if stat.st_nlink > 1 && stat.st_uid != self.owner {
                    return Err(Refused::Error(format!(
                        "{} is a hard link to a file another user owns: no snapshot is taken of it",
                        shown(f.path)
                    )));
                }
                let key = StatKey::of(&stat);
                self.stats.hashed += 1;
                let contents = self.read(&mut file, f.path)?;
                (contents, super::trusted(key.ctime_ns, self.start_ns).then_some(key))
            }
        };
        let (hash, size, extent) = contents;
        self.next.files.insert(f.path.into(), Recorded { stat, hash, size });
        self.stats.files += 1;
        let extent = extent.unwrap_or(Extent { pack: 0, offset: 0, length: 0 });
        Ok(Some(SnapshotEntry {
            size,
            blake3: to_hex(&hash),
            pack: extent.pack,
            offset: extent.offset,
            length: extent.length,
            ..self.plain(f, snapshot_entry::Kind::File)
        }))
    }

    /// The contents of the file at `path` when its stat key is the one
    /// recorded and they are in a stored pack.
    fn unchanged(&self, path: &[u8], key: StatKey) -> Option<Contents> {
        let known = self.known.files.get(path).filter(|r| r.stat == Some(key))?;
        if known.size == 0 {
            return Some((known.hash, 0, None));
        }
        let extent = self.next.contents.get(&known.hash)?;
        Some((known.hash, known.size, Some(*extent)))
    }

    /// Reads a file: hashes it; when its contents are new, checks them for
    /// secrets and writes their frame.
    fn read(&mut self, file: &mut File, path: &[u8]) -> Result<Contents, Refused> {
        let (hash, size, whole) = self.hash(file, path)?;
        if size == 0 {
            return Ok((empty_hash(), 0, None));
        }
        if let Some(extent) = self.next.contents.get(&hash) {
            return Ok((hash, size, Some(*extent)));
        }
        if whole {
            let extent = self.write_small(path)?;
            return Ok(self.added(hash, size, extent));
        }
        // Large and new: read again, compressing; what that read is what is recorded.
        file.rewind().map_err(|e| Refused::Error(format!("cannot read {}: {e}", shown(path))))?;
        let (hash, size, extent) = self.write_streamed(file, path)?;
        if size == 0 {
            return Ok((empty_hash(), 0, None));
        }
        Ok(self.added(hash, size, extent))
    }

    /// Records a content just written to the pack.
    fn added(&mut self, hash: [u8; 32], size: u64, extent: Extent) -> Contents {
        self.next.contents.insert(hash, extent);
        self.stats.new_files += 1;
        self.stats.new_bytes += size;
        (hash, size, Some(extent))
    }

    /// Hashes `file`; its contents stay in `self.small` when they are
    /// small (`whole`).
    fn hash(&mut self, file: &mut File, path: &[u8]) -> Result<([u8; 32], u64, bool), Refused> {
        let mut hasher = blake3::Hasher::new();
        let (mut size, mut whole) = (0u64, true);
        self.small.clear();
        loop {
            let n = read_some(file, &mut self.buf, path)?;
            if n == 0 {
                break;
            }
            hasher.update(&self.buf[..n]);
            size += n as u64;
            whole = whole && self.small.len() + n <= SMALL;
            if whole {
                self.small.extend_from_slice(&self.buf[..n]);
            }
        }
        if !whole {
            self.small = Vec::new();
        }
        Ok((*hasher.finalize().as_bytes(), size, whole))
    }

    /// Checks the contents in `self.small` for secrets (in reads of
    /// [`READ_BUF`], as a large file is) and writes their frame.
    fn write_small(&mut self, path: &[u8]) -> Result<Extent, Refused> {
        let mut gate = Gate::new(self.secrets.as_ref(), self.hold);
        for chunk in self.small.chunks(READ_BUF) {
            if !gate.push(chunk, &mut |_: &[u8]| Ok(())).map_err(|e| pack_error(&e))? {
                return Err(Refused::Secret { path: shown(path) });
            }
        }
        let frame = self
            .compressor
            .compress(&self.small)
            .map_err(|e| Refused::Error(format!("cannot compress {}: {e}", shown(path))))?;
        let (pack, offset) = (self.this_pack(), self.pack.written);
        self.pack.write_all(&frame).map_err(|e| pack_error(&e))?;
        Ok(Extent { pack, offset, length: frame.len() as u64 })
    }

    /// Reads `file` again, hashing, checking for secrets and compressing
    /// into the pack as it goes.
    fn write_streamed(&mut self, file: &mut File, path: &[u8]) -> Result<([u8; 32], u64, Extent), Refused> {
        let (pack, offset) = (self.this_pack(), self.pack.written);
        let mut gate = Gate::new(self.secrets.as_ref(), self.hold);
        let mut encoder = zstd::stream::write::Encoder::new(&mut self.pack, LEVEL)
            .map_err(|e| Refused::Error(format!("cannot start compressing: {e}")))?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut out = |b: &[u8]| encoder.write_all(b);
        loop {
            let n = read_some(file, &mut self.buf, path)?;
            if n == 0 {
                break;
            }
            hasher.update(&self.buf[..n]);
            size += n as u64;
            if !gate.push(&self.buf[..n], &mut out).map_err(|e| pack_error(&e))? {
                return Err(Refused::Secret { path: shown(path) });
            }
        }
        gate.end(&mut out).map_err(|e| pack_error(&e))?;
        encoder.finish().map_err(|e| pack_error(&e))?;
        let extent = Extent { pack, offset, length: self.pack.written - offset };
        Ok((*hasher.finalize().as_bytes(), size, extent))
    }

    /// This pack's index in `next.packs` (made on first use).
    fn this_pack(&mut self) -> u32 {
        if let Some(i) = self.this_pack {
            return i;
        }
        let i = match self.next.packs.iter().position(String::is_empty) {
            Some(i) => i,
            None => {
                self.next.packs.push(String::new());
                self.next.packs.len() - 1
            }
        };
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        self.this_pack = Some(i);
        i
    }

    /// The manifest's packs, entries and total size.
    fn finish(mut self) -> Result<Taken, Refused> {
        self.pack.flush().map_err(|e| pack_error(&e))?;
        self.stats.pack_bytes = self.pack.written;
        let framed = |e: &SnapshotEntry| e.kind == snapshot_entry::Kind::File as i32 && e.size > 0;
        let used: BTreeSet<u32> = self.entries.iter().filter(|e| framed(e)).map(|e| e.pack).collect();
        let (mut packs, mut index, mut by_digest) = (Vec::new(), HashMap::new(), HashMap::new());
        for slot in used {
            let digest = self.next.packs.get(slot as usize).cloned().unwrap_or_default();
            let at = *by_digest.entry(digest.clone()).or_insert_with(|| {
                packs.push(digest);
                u32::try_from(packs.len() - 1).unwrap_or(u32::MAX)
            });
            index.insert(slot, at);
        }
        let mut total_size = 0;
        for e in self.entries.iter_mut() {
            total_size += e.size;
            if framed(e) {
                e.pack = index.get(&e.pack).copied().unwrap_or(e.pack);
            }
        }
        let manifest = SnapshotManifest { packs, entries: self.entries, total_size, ..SnapshotManifest::default() };
        Ok(Taken { manifest, known: self.next, stats: self.stats })
    }
}

/// What of `known` a new snapshot can rely on: the packs, and the contents
/// in stored ones (a pack never named by [`Known::pack_stored`] counts as
/// lost). Files are recorded anew by the walk.
fn stored_part(known: &Known) -> Known {
    let stored = |e: &Extent| known.packs.get(e.pack as usize).is_some_and(|d| !d.is_empty());
    Known {
        packs: known.packs.clone(),
        contents: known.contents.iter().filter(|(_, e)| stored(e)).map(|(h, e)| (*h, *e)).collect(),
        files: HashMap::new(),
    }
}

/// A file the walk found, opened.
enum Opened {
    File(File),
    /// It vanished (or a link took its place).
    Gone,
    /// Something else took its place.
    Special,
}

/// Opens a file the walk found, never through a link, nor blocking on a
/// fifo swapped in.
fn open(f: &Found<'_>) -> Result<Opened, Refused> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    match nix::fcntl::openat(f.dir.as_fd(), f.name, flags, Mode::empty()) {
        Ok(fd) => {
            let file = File::from(fd);
            let regular = fstat(file.as_fd()).is_ok_and(|s| walk::kind(&s) == Kind::File);
            Ok(if regular { Opened::File(file) } else { Opened::Special })
        }
        Err(Errno::ENOENT | Errno::ELOOP) => Ok(Opened::Gone),
        Err(Errno::ENXIO) => Ok(Opened::Special),
        Err(e) => Err(Refused::Error(format!("cannot open {}: {e}", shown(f.path)))),
    }
}

/// One read (retried when interrupted).
fn read_some(file: &mut File, buf: &mut [u8], path: &[u8]) -> Result<usize, Refused> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map_err(|e| Refused::Error(format!("cannot read {}: {e}", shown(path)))),
        }
    }
}

fn pack_error(e: &io::Error) -> Refused {
    Refused::Error(format!("cannot write the snapshot pack: {e}"))
}
