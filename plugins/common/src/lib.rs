//! Logic shared by the first-party plugins.
//!
//! **Why a crate of its own, not a module of the SDK:** the SDK
//! (`viaduct-plugin-sdk`) is the ABI wrapper every plugin — ours and third
//! parties' — depends on, and it should only change with the ABI. Project
//! detection is first-party policy that changes with the ecosystems (a new
//! lockfile, a new package manager), and two plugins must agree on it:
//! `detect` reports it and `cache` derives its default key, key files and
//! paths from it. So it lives once, here, and both depend on it. It is
//! plain `std` (no host imports), so all of it runs in native unit tests.
//!
//! - [`detect`]: project types from file names (`detect`, `cache`);
//! - [`release`]: default release ids and simple names (`deploy`,
//!   `container-deploy`, `ssh-deploy`), rollback targets and pruning
//!   (`deploy`, `ssh-deploy`);
//! - [`time`]: UTC timestamps without a date library (`deploy`,
//!   `container-deploy`, `nix-check`, `ssh-deploy`).

#![warn(missing_docs)]

pub mod detect;
pub mod release;
pub mod time;
