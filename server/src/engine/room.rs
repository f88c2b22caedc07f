//! Room for new work: whether the disk the server writes to can take more.
//!
//! The engine asks [`Room::check`] before it accepts new work — a run
//! (whatever starts it) or a retry — and the API asks before taking new
//! blobs (cache saves, artifacts). Work already accepted goes on: runners'
//! step results and logs use the space kept free, so nothing acknowledged
//! is lost and running jobs finish. Like the clock, it is injected
//! (`EngineConfig::room`): the server's watches the data directory's free
//! space (`crate::space`); tests set their own.

use std::fmt::Debug;

use crate::error::Result;

/// Whether there is room for new work.
pub trait Room: Debug + Send + Sync {
    /// `Ok` when new work may be accepted; otherwise the error to refuse it
    /// with (`Error::NoRoom`).
    fn check(&self) -> Result<()>;
}

/// Always room (the in-memory store, tests).
#[derive(Debug, Default)]
pub struct Unbounded;

impl Room for Unbounded {
    fn check(&self) -> Result<()> {
        Ok(())
    }
}
