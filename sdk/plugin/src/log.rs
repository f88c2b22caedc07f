//! The step log.
//!
//! Lines appear live on the run page. Plain `println!`/`eprintln!` output
//! reaches the same log (as info), but only these functions carry a level:
//! the host prefixes warnings and errors.

use crate::{bindings::viaduct::plugin::log as wit, host};

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Details for debugging the plugin.
    Debug,
    /// Progress.
    Info,
    /// Something the pipeline author should look at; the step goes on.
    Warn,
    /// Something failed.
    Error,
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}

/// Appends `message` (one or more lines) to the step log at `level`.
pub fn write(level: Level, message: impl AsRef<str>) {
    host::log_write(level.into(), message.as_ref());
}

/// Logs at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message);
}

/// Logs at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message);
}

/// Logs at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message);
}
