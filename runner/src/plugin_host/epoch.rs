//! wasmtime's epoch clock for the whole runner: one thread increments the
//! engine's epoch every [`TICK`] while some plugin call holds a
//! [`Ticking`], and is parked otherwise, so an idle runner's process is
//! not woken a hundred times a second for nothing.
//!
//! No tick is lost to the parking: a call announces itself (the count,
//! then `unpark`) before its store exists, and `unpark` before `park`
//! makes that `park` return at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::Thread,
};

use super::TICK;

/// The ticking thread and how many calls need it. Dropped, it ends the
/// thread (and the engine it holds).
pub(super) struct Epoch {
    calls: Arc<AtomicUsize>,
    thread: Thread,
}

/// What [`Epoch::calls`] holds once the epoch is dropped: more calls than
/// can ever run at once.
const STOPPED: usize = usize::MAX / 2;

impl Epoch {
    /// Starts the (parked) thread that calls `tick` (the engine's
    /// `increment_epoch`) every [`TICK`] while a call needs it.
    pub(super) fn start(tick: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let handle = std::thread::Builder::new().name("viaduct-epoch".into()).spawn(move || {
            loop {
                let calls = seen.load(Ordering::Acquire);
                if calls >= STOPPED {
                    return;
                }
                if calls == 0 {
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(TICK);
                tick();
            }
        })?;
        Ok(Self { calls, thread: handle.thread().clone() })
    }

    /// Keeps the epoch ticking until the value is dropped (with the call's
    /// future, however it ends).
    pub(super) fn ticking(&self) -> Ticking {
        if self.calls.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        Ticking { calls: Arc::clone(&self.calls) }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.calls.fetch_add(STOPPED, Ordering::AcqRel);
        self.thread.unpark();
    }
}

/// A plugin call in progress: the epoch ticks while one exists.
pub(super) struct Ticking {
    calls: Arc<AtomicUsize>,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicU64,
        time::{Duration, Instant},
    };

    use super::*;

    /// The epoch advances while a call holds a [`Ticking`], from a parked
    /// start, and again after the thread parked in between.
    #[test]
    fn the_epoch_ticks_while_a_call_runs_and_again_after_a_pause() {
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&ticks);
        let epoch = Epoch::start(move || {
            counted.fetch_add(1, Ordering::AcqRel);
        })
        .unwrap();
        for _ in 0..2 {
            let ticking = epoch.ticking();
            let before = ticks.load(Ordering::Acquire);
            let started = Instant::now();
            while ticks.load(Ordering::Acquire) == before {
                assert!(started.elapsed() < Duration::from_secs(30), "the epoch never ticked");
                std::thread::yield_now();
            }
            drop(ticking);
        }
    }
}
