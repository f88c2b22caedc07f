//! The work dir's free space: below `--min-free-disk` the runner pauses —
//! it tells the server (a `Pause` with the reason) and is given no new
//! jobs; the jobs it runs go on — and takes jobs again by itself once
//! space returns. Read (statvfs) every [`CHECK_EVERY`].

use std::{path::Path, time::Duration};

use tokio::sync::watch;

/// How often the free space is read.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why the runner must pause: `dir`'s filesystem has less than `min_free`
/// bytes available. `None` when it has them, when `min_free` is 0, or when
/// the space cannot be read (logged: a runner is not stopped by a
/// filesystem that does not say).
pub fn shortage(dir: &Path, min_free: u64) -> Option<String> {
    if min_free == 0 {
        return None;
    }
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let free = s.blocks_available().saturating_mul(s.fragment_size());
            (free < min_free).then(|| {
                format!("its work dir has {} MiB free, under its --min-free-disk of {} MiB", mib(free), mib(min_free))
            })
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the work dir's free space");
            None
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// Keeps `paused` at [`shortage`] of `dir`, read every [`CHECK_EVERY`]
/// (logging each change); never returns.
pub async fn watch(dir: &Path, min_free: u64, paused: &watch::Sender<String>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = shortage(dir, min_free).unwrap_or_default();
        paused.send_if_modified(|old| {
            if *old == now {
                return false;
            }
            if now.is_empty() {
                tracing::info!("disk space returned: taking jobs again");
            } else {
                tracing::warn!(reason = %now, "pausing: no new jobs until space returns");
            }
            *old = now;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_disk_pauses_and_zero_never_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(shortage(dir.path(), 0), None);
        assert_eq!(shortage(dir.path(), 1), None);
        let why = shortage(dir.path(), u64::MAX).expect("short");
        assert!(why.starts_with("its work dir has ") && why.contains("--min-free-disk"), "{why}");
    }
}
