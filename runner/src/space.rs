//! The work dir's free space: below `--min-free-disk` the runner pauses —
//! it tells the server (a `Pause` with the reason) and is given no new
//! jobs; the jobs it runs go on — and takes jobs again by itself once
//! space returns, with a tenth of the floor to spare (a disk at the floor
//! does not flap). Read (statvfs) every [`CHECK_EVERY`].

use std::{path::Path, time::Duration};

use tokio::sync::watch;

/// How often the free space is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Bytes available on `dir`'s filesystem; `None` when they cannot be read
/// (logged: a runner is not stopped by a filesystem that does not say).
pub fn free(dir: &Path) -> Option<u64> {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => Some(s.blocks_available().saturating_mul(s.fragment_size())),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the work dir's free space");
            None
        }
    }
}

/// What `paused` (the reason, or empty) becomes after a reading of
/// `free` bytes against the floor `min_free` (0: never paused): `Some`
/// when it changes. A pause's reason is the reading that started it: it is
/// not rewritten while the runner stays paused.
pub fn judge(paused: &str, free: Option<u64>, min_free: u64) -> Option<String> {
    let Some(free) = free.filter(|_| min_free > 0) else {
        return (!paused.is_empty()).then(String::new);
    };
    if paused.is_empty() {
        (free < min_free).then(|| {
            format!("its work dir has {} MiB free, under its --min-free-disk of {} MiB", mib(free), mib(min_free))
        })
    } else {
        (free >= min_free.saturating_add(min_free / 10)).then(String::new)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// Keeps `paused` judged on `dir`'s free space, read every
/// [`CHECK_EVERY`] (logging each change); never returns.
pub async fn watch(dir: &Path, min_free: u64, paused: &watch::Sender<String>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = dir.to_path_buf();
        // statvfs may block (a network filesystem): not on the runtime.
        let reading = tokio::task::spawn_blocking(move || free(&d)).await.ok().flatten();
        let Some(now) = judge(&paused.borrow(), reading, min_free) else { continue };
        if now.is_empty() {
            tracing::info!("disk space returned: taking jobs again");
        } else {
            tracing::warn!(reason = %now, "pausing: no new jobs until space returns");
        }
        paused.send_replace(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_pauses_under_the_floor_keeps_its_reason_and_resumes_a_tenth_above() {
        const MIB: u64 = 1 << 20;
        let why = judge("", Some(5 * MIB), 10 * MIB).expect("pauses");
        assert_eq!(why, "its work dir has 5.0 MiB free, under its --min-free-disk of 10.0 MiB");
        assert_eq!(judge(&why, Some(4 * MIB), 10 * MIB), None, "the reason is not rewritten");
        assert_eq!(judge(&why, Some(10 * MIB), 10 * MIB), None, "at the floor it stays paused");
        assert_eq!(judge(&why, Some(11 * MIB), 10 * MIB), Some(String::new()));
        assert_eq!(judge("", Some(10 * MIB), 10 * MIB), None);
        assert_eq!(judge("", Some(0), 0), None, "0: never");
        assert_eq!(judge(&why, None, 10 * MIB), Some(String::new()), "unreadable: not paused");
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(free(dir.path()).is_some_and(|f| f > 0));
    }
}
