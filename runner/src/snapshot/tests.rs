use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use viaduct_proto::v1::{SnapshotEntry, SnapshotManifest, snapshot_entry};

use super::*;

const SECRET: &str = "hunter2-very-secret";

/// An entry of a tree as compared: kind, mode, mtime, contents or target.
type Node = (char, u32, i64, Vec<u8>);

/// Everything beneath `root`, by relative path.
fn tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    collect(root, root, &mut out);
    out
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        let time = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let mode = meta.mode() & 0o7777;
        let node = if meta.is_symlink() {
            ('l', 0, time, fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec())
        } else if meta.is_dir() {
            collect(root, &path, out);
            ('d', mode, time, Vec::new())
        } else if meta.is_file() {
            ('f', mode, time, fs::read(&path).unwrap())
        } else {
            ('s', mode, 0, Vec::new())
        };
        out.insert(rel, node);
    }
}

/// Deterministic bytes that do not compress much.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn set_mtime(path: &Path, ns: i64) {
    let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64);
    let file = fs::File::open(path).unwrap();
    file.set_times(fs::FileTimes::new().set_modified(time)).unwrap();
}

/// Waits until the files written so far have trusted stat keys.
fn settle() {
    std::thread::sleep(Duration::from_nanos(RACY_NS as u64) + Duration::from_millis(30));
}

/// Takes a snapshot; the pack it wrote.
fn snap(ws: &Path, known: &Known, secrets: &[&str]) -> Result<(Taken, Vec<u8>), Refused> {
    let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    let mut pack = Vec::new();
    let taken = take(ws, known, &secrets, &mut pack)?;
    assert_eq!(taken.stats.pack_bytes, pack.len() as u64);
    Ok((taken, pack))
}

/// Restores from `packs` (by manifest index), in odd-sized chunks.
fn restore_from(dest: &Path, manifest: &SnapshotManifest, packs: &[&[u8]]) -> Result<RestoreStats, String> {
    let mut chunks: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
    for (i, pack) in packs.iter().enumerate() {
        for c in pack.chunks(7777) {
            chunks.push_back((i as u32, c.to_vec()));
        }
    }
    restore(dest, manifest, || Ok(chunks.pop_front()))
}

fn fresh(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::create_dir(&path).unwrap();
    path
}

/// A tree of every kind of entry.
fn sample(ws: &Path) {
    write(ws, "a/x.txt", b"hello");
    write(ws, "a/b/c/deep", b"deep down");
    write(ws, "same1", b"same contents");
    write(ws, "a/same2", b"same contents");
    write(ws, "empty", b"");
    write(ws, "run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(ws.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(ws, "ro", b"read only");
    fs::set_permissions(ws.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
    let big = noise(5 << 20, 7);
    write(ws, "big.bin", &big);
    write(ws, "a/big-copy.bin", &big);
    fs::write(ws.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name").unwrap();
    let long = format!("{}/{}", "l".repeat(120), "n".repeat(90));
    write(ws, &long, b"long path");
    fs::create_dir_all(ws.join("empty-dir")).unwrap();
    fs::create_dir_all(ws.join("locked")).unwrap();
    write(ws, "locked/inside", b"inside");
    symlink("a/x.txt", ws.join("link-rel")).unwrap();
    symlink("/etc/passwd", ws.join("link-abs")).unwrap();
    symlink("../outside//x/", ws.join("link-up")).unwrap();
    symlink("t".repeat(150), ws.join("link-long")).unwrap();
    nix::unistd::mkfifo(&ws.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    set_mtime(&ws.join("a/x.txt"), 1_600_000_000_123_456_789);
    set_mtime(&ws.join("big.bin"), 1_500_000_000_987_654_321);
    fs::set_permissions(ws.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    set_mtime(&ws.join("a/b"), 1_400_000_000_000_000_001);
}

/// Lets the tree of [`sample`] be removed (by a user other than root).
fn unlock(ws: &Path) {
    fs::set_permissions(ws.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_snapshot_restores_to_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    sample(&ws);
    let (taken, pack) = snap(&ws, &Known::new(), &[SECRET]).unwrap();
    assert_eq!(taken.manifest.packs, vec![String::new()]);
    assert_eq!(taken.stats.skipped_special, 1);
    assert_eq!(taken.stats.files, 12);
    // Duplicates are stored once; empty files not at all.
    assert_eq!(taken.stats.new_files, 9);
    assert!(taken.manifest.entries.iter().all(|e| !e.path.starts_with(b"/") && !e.path.is_empty()));
    let dest = fresh(&dir, "dest");
    let stats = restore_from(&dest, &taken.manifest, &[&pack]).unwrap();
    assert_eq!(stats.files, 12);
    assert_eq!(stats.symlinks, 4);
    assert_eq!(stats.pack_bytes, pack.len() as u64);
    let mut want = tree(&ws);
    want.remove(b"fifo".as_slice());
    assert_eq!(tree(&dest), want);
    for (path, (_, _, time, _)) in &want {
        if path.as_slice() == b"a/x.txt" {
            assert_eq!(*time, 1_600_000_000_123_456_789);
        }
    }
    unlock(&ws);
    unlock(&dest);
}

/// 200 files in 10 directories.
fn many(ws: &Path) {
    for i in 0..200 {
        write(ws, &format!("d{}/f{i}", i % 10), format!("file number {i}").as_bytes());
    }
}

#[test]
fn a_second_snapshot_stores_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    many(&ws);
    settle();
    let (first, pack1) = snap(&ws, &Known::new(), &[]).unwrap();
    assert_eq!((first.stats.hashed, first.stats.new_files), (200, 200));
    let mut known = first.known;
    known.pack_stored("pack-1");
    write(&ws, "d7/f57", b"changed contents");
    settle();
    let (second, pack2) = snap(&ws, &known, &[]).unwrap();
    assert_eq!((second.stats.files, second.stats.hashed, second.stats.new_files), (200, 1, 1));
    assert_eq!(second.stats.new_bytes, 16);
    assert!(pack2.len() < 100, "{}", pack2.len());
    assert_eq!(second.manifest.packs, vec!["pack-1".to_string(), String::new()]);
    for e in second.manifest.entries.iter().filter(|e| e.kind == snapshot_entry::Kind::File as i32) {
        assert_eq!(e.pack, u32::from(e.path == b"d7/f57"), "{:?}", shown(&e.path));
    }
    let dest = fresh(&dir, "dest");
    restore_from(&dest, &second.manifest, &[&pack1, &pack2]).unwrap();
    assert_eq!(tree(&dest), tree(&ws));

    // Nothing changed: nothing read, nothing written, no new pack.
    let mut known = second.known;
    known.pack_stored("pack-2");
    let (third, pack3) = snap(&ws, &known, &[]).unwrap();
    assert!(pack3.is_empty());
    assert_eq!((third.stats.hashed, third.stats.new_files), (0, 0));
    assert_eq!(third.manifest.packs, vec!["pack-1".to_string(), "pack-2".to_string()]);
    assert_eq!(third.manifest.entries, second.manifest.entries);

    // A deleted file is gone from the next one.
    fs::remove_file(ws.join("d3/f13")).unwrap();
    let (fourth, pack4) = snap(&ws, &third.known, &[]).unwrap();
    assert!(pack4.is_empty());
    assert_eq!(fourth.stats.files, 199);
    assert!(fourth.manifest.entries.iter().all(|e| e.path != b"d3/f13"));
    assert_eq!(fourth.known.files(), 199);
}

#[test]
fn a_pack_never_stored_is_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    write(&ws, "f", b"contents");
    settle();
    let (first, _) = snap(&ws, &Known::new(), &[]).unwrap();
    // The upload failed: no pack_stored.
    let (second, pack) = snap(&ws, &first.known, &[]).unwrap();
    assert_eq!(second.stats.new_files, 1);
    assert_eq!(second.manifest.packs, vec![String::new()]);
    let dest = fresh(&dir, "dest");
    restore_from(&dest, &second.manifest, &[&pack]).unwrap();
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"contents");
}

#[test]
fn recently_changed_files_are_read_again_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    write(&ws, "f", b"contents");
    let (first, _) = snap(&ws, &Known::new(), &[]).unwrap();
    let mut known = first.known;
    known.pack_stored("p");
    let (second, pack) = snap(&ws, &known, &[]).unwrap();
    assert_eq!((second.stats.hashed, second.stats.new_files), (1, 0));
    assert!(pack.is_empty());
}

#[test]
fn a_secret_in_new_contents_refuses_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    write(&ws, "ok", b"nothing to see");
    write(&ws, "sub/leak", format!("token={SECRET}\n").as_bytes());
    let mut pack = Vec::new();
    let err = take(&ws, &Known::new(), &[SECRET.to_string()], &mut pack).unwrap_err();
    assert_eq!(err, Refused::Secret { path: "sub/leak".into() });
    assert!(err.to_string().contains("sub/leak"));
    // Short values are not searched for.
    assert!(snap(&ws, &Known::new(), &["tok"]).is_ok());
}

#[test]
fn a_secret_split_across_reads_is_found() {
    let dir = tempfile::tempdir().unwrap();
    for (len, at) in [(READ_BUF * 2, READ_BUF - 5), (SMALL + READ_BUF * 3, READ_BUF * 4 - 7)] {
        let ws = dir.path().join(format!("ws{len}"));
        fs::create_dir(&ws).unwrap();
        let mut data = vec![b'.'; len];
        data[at..at + SECRET.len()].copy_from_slice(SECRET.as_bytes());
        write(&ws, "f", &data);
        let err = snap(&ws, &Known::new(), &[SECRET]).unwrap_err();
        assert_eq!(err, Refused::Secret { path: "f".into() }, "{len}");
        data[at] = b'!';
        write(&ws, "f", &data);
        assert!(snap(&ws, &Known::new(), &[SECRET]).is_ok(), "{len}");
    }
}

#[test]
fn a_secret_in_a_name_or_link_target_refuses_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    write(&ws, &format!("d/x{SECRET}"), b"");
    assert_eq!(snap(&ws, &Known::new(), &[SECRET]).unwrap_err(), Refused::Secret { path: "d".into() });
    let ws = fresh(&dir, "ws2");
    symlink(SECRET, ws.join("l")).unwrap();
    assert_eq!(snap(&ws, &Known::new(), &[SECRET]).unwrap_err(), Refused::Secret { path: "l".into() });
}

#[test]
fn a_recorded_unchanged_file_is_not_searched_again() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    write(&ws, "old", SECRET.as_bytes());
    settle();
    let (first, _) = snap(&ws, &Known::new(), &[]).unwrap();
    let mut known = first.known;
    known.pack_stored("p");
    let (second, _) = snap(&ws, &known, &[SECRET]).unwrap();
    assert_eq!(second.stats.hashed, 0);
    // Changed (even to the same contents): what is known is not searched again either.
    fs::remove_file(ws.join("old")).unwrap();
    write(&ws, "old", SECRET.as_bytes());
    let (third, _) = snap(&ws, &known, &[SECRET]).unwrap();
    assert_eq!((third.stats.hashed, third.stats.new_files), (1, 0));
}

#[test]
fn after_a_restore_nothing_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    sample(&ws);
    many(&ws);
    let (taken, pack) = snap(&ws, &Known::new(), &[]).unwrap();
    let mut manifest = taken.manifest;
    manifest.packs = vec!["pack-1".into()];
    let dest = fresh(&dir, "dest");
    restore_from(&dest, &manifest, &[&pack]).unwrap();
    let known = Known::after_restore(&manifest, &dest);
    assert_eq!(known.files(), 212);
    let (again, pack) = snap(&dest, &known, &[]).unwrap();
    assert_eq!((again.stats.hashed, again.stats.new_files), (0, 0));
    assert!(pack.is_empty());
    assert_eq!(again.manifest.packs, manifest.packs);
    assert_eq!(again.manifest.entries, manifest.entries);
    unlock(&ws);
    unlock(&dest);
}

/// A manifest of `entries`, all in pack 0.
fn manifest(entries: Vec<SnapshotEntry>) -> SnapshotManifest {
    SnapshotManifest { packs: vec!["p".into()], entries, ..SnapshotManifest::default() }
}

fn empty_file(path: &[u8]) -> SnapshotEntry {
    SnapshotEntry {
        path: path.to_vec(),
        kind: snapshot_entry::Kind::File as i32,
        mode: 0o644,
        blake3: to_hex(&empty_hash()),
        ..SnapshotEntry::default()
    }
}

#[test]
fn a_restore_never_writes_outside_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let outside = fresh(&dir, "outside");
    let link = SnapshotEntry {
        path: b"l".to_vec(),
        kind: snapshot_entry::Kind::Symlink as i32,
        target: outside.as_os_str().as_bytes().to_vec(),
        ..SnapshotEntry::default()
    };
    let dot = SnapshotEntry { path: b"d".to_vec(), kind: snapshot_entry::Kind::Directory as i32, ..link.clone() };
    let cases = [
        vec![empty_file(b"../x")],
        vec![empty_file(b"/x")],
        vec![empty_file(b"a//x")],
        vec![empty_file(b"")],
        vec![empty_file(b"x/y")],
        vec![link.clone(), empty_file(b"l/x")],
        vec![dot.clone(), empty_file(b"d/../../x")],
        vec![empty_file(b"x"), empty_file(b"x")],
    ];
    for (i, entries) in cases.into_iter().enumerate() {
        let ws = fresh(&dir, &format!("ws{i}"));
        let err = restore_from(&ws, &manifest(entries), &[]).unwrap_err();
        assert!(err.contains("bad snapshot entry"), "{err}");
        assert!(!outside.join("x").exists() && !dir.path().join("x").exists());
    }
}

#[test]
fn a_restore_refuses_frames_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let ws = fresh(&dir, "ws");
    write(&ws, "small", b"small contents");
    write(&ws, "big", &noise(SMALL * 3, 3));
    let (taken, pack) = snap(&ws, &Known::new(), &[]).unwrap();
    let edit = |path: &[u8], change: &dyn Fn(&mut SnapshotEntry)| {
        let mut m = taken.manifest.clone();
        m.entries.iter_mut().filter(|e| e.path == path).for_each(change);
        m
    };
    let other = to_hex(blake3::hash(b"other").as_bytes());
    let cases = [
        (edit(b"small", &|e| e.pack = 3), "pack 3 of 1"),
        (edit(b"small", &|e| e.blake3 = other.clone()), "blake3"),
        (edit(b"big", &|e| e.blake3 = other.clone()), "blake3"),
        (edit(b"small", &|e| e.size += 1), "fewer bytes"),
        (edit(b"big", &|e| e.offset = pack.len() as u64 + 10), "ends before"),
        (edit(b"small", &|e| e.blake3 = "XYZ".into()), "no valid blake3"),
        (edit(b"small", &|e| e.kind = 9), "unknown kind"),
    ];
    for (i, (m, why)) in cases.iter().enumerate() {
        let dest = fresh(&dir, &format!("dest{i}"));
        let err = restore_from(&dest, m, &[&pack]).unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
    }
    let dest = fresh(&dir, "short");
    let err = restore_from(&dest, &taken.manifest, &[&pack[..pack.len() / 2]]).unwrap_err();
    assert!(err.contains("cut short") || err.contains("ends before"), "{err}");
}
