//! Workspace snapshots in-process: taking one of a build-like tree (~1 GiB:
//! files of 1 MiB, half random and half text, and thousands of small ones)
//! when everything is new, when one file changed, when nothing did and when
//! every file did; restoring it into an empty directory; against `tar -cf -
//! . | zstd -1 -T1` and `zstd -d | tar -x` of the same tree and the bare
//! cost of reading it. Each figure is the median of a few runs, with the
//! page cache warm (the tree fits in memory) and dirty pages written back
//! before each run. Figures are printed, never asserted.
//!
//! `cargo bench -p viaduct-runner --bench snapshots` (`cargo xtask bench
//! snapshots` runs it too); `VIADUCT_BENCH_SNAPSHOT_MB=256` for a quicker
//! run (default 1024). The tree is made under `$TMPDIR` (default /tmp):
//! set it to measure on another file system (file creation dominates the
//! restores, and on an ext4 without a journal it is slow for a minute
//! after many files were removed).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use viaduct_runner::snapshot::{Known, Taken, restore, take};

/// Runs of each measurement.
const REPS: usize = 3;
/// Bytes of a large file.
const BIG: usize = 1 << 20;
/// Bytes of the pack fed to `restore` at a time.
const CHUNK: usize = 256 * 1024;

/// The tree: its large files, its small ones, its bytes.
struct Tree {
    root: PathBuf,
    big: Vec<PathBuf>,
    small: Vec<PathBuf>,
    bytes: u64,
}

/// `len` pseudo-random bytes (blake3's output stream of `seed`).
fn random(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// `len` bytes of source-like lines with a counter (compresses well).
fn text(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut n = 0u64;
    while out.len() < len {
        let _ = match n % 4 {
            0 => writeln!(out, "    let value_{n} = compute(&items[{}], \"{seed}\")?;", n % 97),
            1 => writeln!(out, "    if value_{} > limit {{ return Err(Error::TooLarge({n})); }}", n - 1),
            2 => writeln!(out, "    // step {n} of {seed}: fold the value into the running total"),
            _ => writeln!(out, "    total = total.wrapping_add(value_{}).rotate_left({});", n - 3, n % 31),
        };
        n += 1;
    }
    out.truncate(len);
    out
}

/// Large file `i` of generation `generation`: even ones random, odd ones text.
fn big_contents(i: usize, generation: u32) -> Vec<u8> {
    let seed = format!("big {i} gen {generation}");
    if i.is_multiple_of(2) { random(&seed, BIG) } else { text(&seed, BIG) }
}

/// Small file `k` (1–8 KiB): even ones random (objects), odd ones text (sources).
fn small_contents(k: usize, generation: u32) -> Vec<u8> {
    let len = 1024 + (k.wrapping_mul(2_654_435_761) % (7 * 1024 + 1));
    let seed = format!("small {k} gen {generation}");
    if k.is_multiple_of(2) { random(&seed, len) } else { text(&seed, len) }
}

impl Tree {
    /// ~`mb` MiB: about `mb` × 1000/1024 large files and five times as
    /// many small ones, in nested directories.
    fn make(root: PathBuf, mb: usize) -> Self {
        let big_n = (mb * 1000 / 1024).max(2);
        let big = (0..big_n)
            .map(|i| {
                let ext = if i.is_multiple_of(2) { "bin" } else { "txt" };
                root.join(format!("assets/g{:02}/h{}/f{i:04}.{ext}", i / 100, i / 10 % 10))
            })
            .collect();
        let small = (0..big_n * 5)
            .map(|k| {
                let ext = if k.is_multiple_of(2) { "o" } else { "rs" };
                root.join(format!("target/debug/c{:02}/m{}/s{k:05}.{ext}", k / 250, k / 50 % 5))
            })
            .collect();
        let mut tree = Tree { root, big, small, bytes: 0 };
        tree.write_all(0);
        tree
    }

    /// Writes every file anew with the contents of `generation`.
    fn write_all(&mut self, generation: u32) {
        let mut bytes = 0;
        for (i, path) in self.big.iter().enumerate() {
            bytes += write(path, &big_contents(i, generation));
        }
        for (k, path) in self.small.iter().enumerate() {
            bytes += write(path, &small_contents(k, generation));
        }
        self.bytes = bytes;
    }
}

/// Writes `data` at `path` (truncating what was there; parents made).
fn write(path: &Path, data: &[u8]) -> u64 {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, data).unwrap();
    data.len() as u64
}

/// Writes back dirty pages, so that a run does not pay for the writes before it.
fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

/// Runs `sh -e -c script` in `dir`; how long it took.
fn shell(dir: &Path, script: &str) -> Duration {
    let t0 = Instant::now();
    let out = Command::new("sh").args(["-e", "-c", script]).current_dir(dir).output().unwrap();
    let took = t0.elapsed();
    assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    took
}

/// A snapshot of `root` after `known`, its pack written to `pack`.
fn snap(root: &Path, known: &Known, pack: &mut dyn Write) -> (Duration, Taken) {
    sync();
    let t0 = Instant::now();
    let taken = take(root, known, &[], pack).unwrap();
    (t0.elapsed(), taken)
}

/// A snapshot with its pack in the file `pack`, stored (named) as `digest`.
fn snap_to_file(root: &Path, known: &Known, pack: &Path, digest: &str) -> (Duration, Taken) {
    let mut file = File::create(pack).unwrap();
    let (took, mut taken) = snap(root, known, &mut file);
    taken.known.pack_stored(digest);
    (took, taken)
}

/// Up to `buf.len()` bytes of `file` (fewer only at its end).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// Every regular file under `root`.
fn files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// Reads every file under `root` in 256 KiB reads, passing each read to `each`.
fn read_every(root: &Path, mut each: impl FnMut(&[u8])) -> Duration {
    sync();
    let t0 = Instant::now();
    let mut buf = vec![0; CHUNK];
    for path in files(root) {
        let mut file = File::open(path).unwrap();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            each(&buf[..n]);
        }
    }
    t0.elapsed()
}

/// One line of the table.
struct Row {
    what: String,
    times: Vec<Duration>,
    /// Bytes the throughput is of (none: not shown).
    of: Option<u64>,
    /// Bytes written (pack, archive or files).
    written: Option<u64>,
    /// The baseline it compares with.
    baseline: Option<Duration>,
    note: String,
}

impl Row {
    fn new(what: &str, times: Vec<Duration>) -> Self {
        Row { what: what.into(), times, of: None, written: None, baseline: None, note: String::new() }
    }

    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn print(rows: &[Row]) {
    println!(
        "  {:<46} {:>9} {:>19} {:>9} {:>11} {:>8}  notes",
        "operation", "median", "(min–max)", "MB/s", "written", "×base"
    );
    for r in rows {
        let m = r.median();
        let (lo, hi) = (r.times.iter().min().unwrap(), r.times.iter().max().unwrap());
        let rate = r.of.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1e6 / m.as_secs_f64()));
        let written = r.written.map_or("-".into(), mb);
        let ratio = r.baseline.map_or("-".into(), |b| format!("{:.2}×", m.as_secs_f64() / b.as_secs_f64()));
        println!(
            "  {:<46} {:>6.0} ms {:>19} {rate:>9} {written:>11} {ratio:>8}  {}",
            r.what,
            m.as_secs_f64() * 1e3,
            format!("({:.0}–{:.0} ms)", lo.as_secs_f64() * 1e3, hi.as_secs_f64() * 1e3),
            r.note
        );
    }
}

fn main() {
    let size_mb: usize = std::env::var("VIADUCT_BENCH_SNAPSHOT_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let t0 = Instant::now();
    let mut tree = Tree::make(dir("ws"), size_mb);
    let ws = tree.root.clone();
    let total = tree.bytes;
    println!(
        "snapshots  a tree of {} ({} files of 1 MiB, half random and half text; {} of 1–8 KiB) in {}, made in {:.1} s; \
         median of {REPS} runs, page cache warm",
        mb(total),
        tree.big.len(),
        tree.small.len(),
        tmp.path().display(),
        t0.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();

    // Baselines: tar | zstd -1 one way and the other, and reading the tree.
    let archive = dir("tree.tar.zst");
    let pack_script = format!("tar -cf - . | zstd -q -1 -T1 > {}", archive.display());
    let packed: Vec<Duration> = (0..REPS)
        .map(|_| {
            sync();
            shell(&ws, &pack_script)
        })
        .collect();
    let archive_bytes = fs::metadata(&archive).unwrap().len();
    let unpacked: Vec<Duration> = (0..REPS)
        .map(|r| {
            let into = dir(&format!("untar-{r}"));
            fs::create_dir(&into).unwrap();
            sync();
            shell(&into, &format!("zstd -q -d -c {} | tar -xf -", archive.display()))
        })
        .collect();
    // The write floor: tar -x of the same tree, uncompressed and from a file (no pipe).
    let plain = dir("tree.tar");
    shell(&ws, &format!("zstd -q -d -c {} > {}", archive.display(), plain.display()));
    let untar_plain: Vec<Duration> = (0..REPS)
        .map(|r| {
            let into = dir(&format!("untar-plain-{r}"));
            fs::create_dir(&into).unwrap();
            sync();
            shell(&into, &format!("tar -xf {}", plain.display()))
        })
        .collect();
    let base =
        Row { of: Some(total), written: Some(archive_bytes), ..Row::new("tar -cf - . | zstd -1 -T1 > file", packed) };
    let (base_pack, base_unpack) = (base.median(), Row::new("", unpacked.clone()).median());
    let tar_read: Vec<Duration> = (0..REPS)
        .map(|_| {
            sync();
            shell(&ws, "tar -cf - . | cat > /dev/null")
        })
        .collect();
    let read: Vec<Duration> = (0..REPS).map(|_| read_every(&ws, |_| {})).collect();
    let hashed: Vec<Duration> = (0..REPS)
        .map(|_| {
            let mut h = blake3::Hasher::new();
            read_every(&ws, |b| {
                h.update(b);
            })
        })
        .collect();

    // The first snapshot: everything new; to a file (as the server's blob) and to nowhere.
    let mut first = None;
    let mut to_file = Vec::new();
    for r in 0..REPS {
        let (took, taken) = snap_to_file(&ws, &Known::new(), &dir("pack-first"), &format!("first-{r}"));
        to_file.push(took);
        first = Some(taken);
    }
    let first = first.unwrap();
    let to_sink: Vec<Duration> = (0..REPS).map(|_| snap(&ws, &Known::new(), &mut io::sink()).0).collect();
    let s = first.stats;
    rows.push(Row {
        of: Some(total),
        written: Some(s.pack_bytes),
        baseline: Some(base_pack),
        note: format!("{} files, {} hashed, {} frames", s.files, s.hashed, s.new_files),
        ..Row::new("take: first (everything new), pack to a file", to_file)
    });
    rows.push(Row {
        of: Some(total),
        written: Some(s.pack_bytes),
        baseline: Some(base_pack),
        ..Row::new("take: first, pack to io::sink()", to_sink)
    });

    // Restore of the first snapshot into empty directories (each its own:
    // on this file system, files made soon after others were removed are slow).
    let mut restored = Vec::new();
    let mut stats = None;
    for r in 0..REPS {
        let into = dir(&format!("restore-{r}"));
        fs::create_dir(&into).unwrap();
        sync();
        let t0 = Instant::now();
        let mut pack = File::open(dir("pack-first")).unwrap();
        let chunks = || {
            let mut buf = vec![0; CHUNK];
            let n = read_full(&mut pack, &mut buf).map_err(|e| e.to_string())?;
            buf.truncate(n);
            Ok((n > 0).then_some((0, buf)))
        };
        let st = restore(&into, &first.manifest, chunks).unwrap();
        restored.push(t0.elapsed());
        assert_eq!(st.bytes, total, "the whole tree restored");
        stats = Some(st);
    }
    let st = stats.unwrap();
    rows.push(Row {
        of: Some(total),
        written: Some(st.bytes),
        baseline: Some(base_unpack),
        note: format!("{} dirs, {} files, pack {} read", st.dirs, st.files, mb(st.pack_bytes)),
        ..Row::new("restore of the first into an empty dir", restored)
    });

    // One file changed (each run another), from what the snapshot before
    // knew; the change is let past the racy window (100 ms) first, so that
    // the next snapshot trusts its stat key and reads only its own change.
    let mut one = Vec::new();
    let mut known = first.known.clone();
    let mut s = None;
    for r in 0..REPS {
        let i = r * 2;
        write(&tree.big[i], &big_contents(i, 100 + r as u32));
        std::thread::sleep(Duration::from_millis(250));
        let (took, taken) = snap_to_file(&ws, &known, &dir("pack-one"), &format!("one-{r}"));
        one.push(took);
        known = taken.known;
        s = Some(taken.stats);
    }
    let s = s.unwrap();
    rows.push(Row {
        written: Some(s.pack_bytes),
        baseline: Some(base_pack),
        note: format!("{} hashed, {} frames ({} new)", s.hashed, s.new_files, mb(s.new_bytes)),
        ..Row::new("take: one 1 MiB file rewritten", one)
    });

    // Nothing changed.
    let mut nothing = Vec::new();
    let mut s = None;
    for r in 0..REPS {
        let (took, taken) = snap_to_file(&ws, &known, &dir("pack-nothing"), &format!("nothing-{r}"));
        nothing.push(took);
        s = Some(taken.stats);
    }
    let s = s.unwrap();
    rows.push(Row {
        written: Some(s.pack_bytes),
        baseline: Some(base_pack),
        note: format!("{} hashed, {} frames", s.hashed, s.new_files),
        ..Row::new("take: nothing changed", nothing)
    });

    // Every file rewritten with new contents.
    let mut every = Vec::new();
    let mut s = None;
    for r in 0..REPS {
        tree.write_all(1000 + r as u32);
        let (took, taken) = snap_to_file(&ws, &known, &dir("pack-every"), &format!("every-{r}"));
        every.push(took);
        known = taken.known;
        s = Some(taken.stats);
    }
    let s = s.unwrap();
    rows.push(Row {
        of: Some(tree.bytes),
        written: Some(s.pack_bytes),
        baseline: Some(base_pack),
        note: format!("{} hashed, {} frames", s.hashed, s.new_files),
        ..Row::new("take: every file rewritten", every)
    });

    rows.push(base);
    rows.push(Row {
        of: Some(total),
        written: Some(total),
        baseline: Some(base_unpack),
        ..Row::new("zstd -d -c file | tar -xf -", unpacked)
    });
    rows.push(Row { of: Some(total), ..Row::new("floor: tar -cf - . | cat > /dev/null", tar_read) });
    rows.push(Row { of: Some(total), ..Row::new("floor: read every file (in-process, 256 KiB)", read) });
    rows.push(Row { of: Some(total), ..Row::new("floor: read + blake3 every file (in-process)", hashed) });
    rows.push(Row {
        of: Some(total),
        written: Some(total),
        ..Row::new("floor: tar -xf tree.tar (uncompressed file)", untar_plain)
    });
    print(&rows);
    println!("  (×base: time over tar | zstd -1 for a take, over zstd -d | tar -x for a restore)");
    drop(tmp);
}
