//! Workspace snapshots: the workspace of a job after one of its steps,
//! recorded incrementally, and restored for a resumed attempt or a debug
//! shell.
//!
//! [`take`] walks the workspace (never following links) and identifies
//! each file's contents by blake3. Contents no earlier snapshot of the job
//! holds are compressed, one zstd frame per file, into a *pack* the caller
//! streams to the server; the manifest lists every entry and where its
//! frame is. What a snapshot learnt ([`Known`]: each file's stat key and
//! each content's frame) makes the next one cost a walk, a stat per entry
//! and the reading of the files whose stat key changed.
//!
//! [`restore`] checks a manifest that came over the network, then turns it
//! and the packs' bytes into a tar stream that [`crate::files::unpack`]
//! writes: every path is resolved beneath the workspace by the kernel.
//! Nanosecond times and the final modes are set afterwards.

mod known;
mod restore;
mod stream;
mod take;
mod walk;

#[cfg(test)]
mod tests;

use std::fmt;

pub use known::Known;
pub use restore::{RestoreStats, restore};
pub use take::{TakeStats, Taken, take};

/// Bytes read from a file at a time; secrets are searched for as they are
/// read, across these reads' boundaries.
const READ_BUF: usize = 256 * 1024;
/// Contents up to this size are held in memory: read once when taken,
/// decompressed whole (and checked) before being written when restored.
const SMALL: usize = 1 << 20;
/// zstd level of the frames: fast, the job waits for the snapshot.
const LEVEL: i32 = 1;
/// Permission bits a manifest records.
const MODE_BITS: u32 = 0o7777;
/// Permission bits a restore applies (no set-user-id, set-group-id or sticky bit).
const RESTORE_BITS: u32 = 0o777;
/// Secrets shorter than this are not searched for (they would match
/// everywhere; the caller passes only longer ones).
const MIN_SECRET: usize = 4;
/// How long after its last change (ctime) a file's stat key is trusted:
/// timestamps are coarse (a clock tick), so a file changed again within
/// the same tick keeps its key. Files changed more recently than this
/// before a snapshot began are read again by the next one.
const RACY_NS: i64 = 100_000_000;
/// The same on file systems that keep whole seconds only (a ctime with
/// no nanoseconds is taken to be one of those).
const RACY_COARSE_NS: i64 = 1_100_000_000;
/// Nanoseconds in a second.
const NS: i64 = 1_000_000_000;

/// Why no snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A secret value is in the workspace: in the contents of the file at
    /// `path`, in the target of the link at `path`, or in the name of an
    /// entry of the directory at `path` (`.`: the workspace itself).
    Secret {
        /// Relative to the workspace (lossy UTF-8).
        path: String,
    },
    /// The workspace could not be read, or the pack not written.
    Error(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Secret { path } => {
                write!(f, "the workspace holds a secret value (at {path}): no snapshot taken")
            }
            Refused::Error(e) => write!(f, "no snapshot taken: {e}"),
        }
    }
}

impl std::error::Error for Refused {}

/// A path of the manifest, for messages.
fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Lowercase hex of a digest.
fn to_hex(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// A digest from the manifest's lowercase hex.
fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let lower = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (lower && hex::decode_to_slice(text, &mut out).is_ok()).then_some(out)
}

/// The blake3 of no bytes.
fn empty_hash() -> [u8; 32] {
    *blake3::hash(&[]).as_bytes()
}

/// Seconds and nanoseconds as nanoseconds since the epoch (saturating).
fn to_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(NS).saturating_add(nsec)
}

/// Now, in nanoseconds since the epoch.
fn now_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// How long after a change at `ctime_ns` a stat key can be trusted.
fn racy_grace(ctime_ns: i64) -> i64 {
    if ctime_ns.rem_euclid(NS) == 0 { RACY_COARSE_NS } else { RACY_NS }
}

/// Whether a file last changed at `ctime_ns` changes its stat key with
/// any change after `start_ns`.
fn trusted(ctime_ns: i64, start_ns: i64) -> bool {
    ctime_ns < start_ns.saturating_sub(racy_grace(ctime_ns))
}

/// A path of the manifest as a file system path.
fn as_path(path: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(path))
}
