//! # Viaduct plugin SDK
//!
//! A Viaduct step plugin is a WebAssembly component (`wasm32-wasip2`)
//! targeting the `viaduct:plugin@1` `step` world (`plugins/wit/plugin.wit`).
//! This crate hides the component-model bindings behind a few types, so a
//! plugin is a function from a [`Context`] to an [`Output`]:
//!
//! ```
//! use viaduct_plugin_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct With {
//!     #[serde(default)]
//!     name: String,
//! }
//!
//! fn run(ctx: Context) -> Result<Output> {
//!     let w: With = ctx.with()?;
//!     ctx.info(format!("hi {}", w.name));
//!     Ok(Output::new().set("greeting", format!("hi {}", w.name)))
//! }
//!
//! viaduct_plugin_sdk::export!(run);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --profile plugin` (a
//! `cdylib` crate; rustc emits a component directly) and publish the
//! `.wasm` with its `plugin.toml` manifest: `docs/plugins.md` walks through
//! it.
//!
//! ## What a plugin gets
//!
//! - [`Context`]: the phase (main/post), the `with:` values decoded with
//!   serde ([`Context::with`], lenient helpers in [`de`]), the granted
//!   environment, run metadata ([`Meta`]) and the post-phase state.
//! - Host imports: [`log`], [`exec`] (allow-listed host programs; several
//!   at once with [`exec::run_all`], ABI 1.1),
//!   [`cache`] (directory trees and small blobs), [`artifacts`] and
//!   [`files`] (copies that keep permission bits, times and links).
//! - `std::fs` on the workspace, which is preopened at `/workspace` and is
//!   the current directory (so relative paths are workspace-relative), and
//!   on `/<name>` for each manifest mount; [`fs`] adds symlinks and input
//!   path validation.
//! - [`Output`]: outputs, a markdown summary ([`markdown`] helps), a post
//!   state. [`Error`]: a message plus outputs and a summary, both still
//!   shown with the failed step; every `std::error::Error` converts into
//!   it, [`ResultExt::context`] adds context, [`bail!`] and [`ensure!`]
//!   return early.
//!
//! ## Panics
//!
//! `wasm32-wasip2` has no unwinding, so a panic aborts the call: the SDK
//! logs the panic message and location at error level first, and the host
//! fails the step with the trap. Return an [`Error`] for expected failures.
//!
//! ## Testing
//!
//! The crate also compiles natively, so a plugin crate can be a
//! `["cdylib", "rlib"]` with ordinary unit tests: [`Context::builder`] makes
//! a context; natively, [`log`] writes to stderr and the other host imports
//! return an error instead of trapping.

#![warn(missing_docs)]

pub mod artifacts;
pub mod bindings;
pub mod cache;
mod context;
pub mod de;
mod error;
pub mod exec;
pub mod files;
pub mod fs;
mod host;
pub mod log;
pub mod markdown;
mod output;
mod runtime;

pub use context::{Context, ContextBuilder, Meta, Phase};
pub use error::{Error, Result, ResultExt};
pub use output::Output;

/// Where the host preopens the job workspace (also the current directory
/// while the plugin runs).
pub const WORKSPACE: &str = "/workspace";

/// The newest ABI version this SDK targets. A plugin's manifest declares
/// the oldest its component needs (`abi`): `"1.1"` when it uses
/// [`exec::run_all`], `"1.0"` otherwise (its imports are the same on every
/// 1.x host).
pub const ABI_VERSION: &str = "1.1";

/// What most plugins need: `use viaduct_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Context, Error, Output, Phase, Result, ResultExt, artifacts, bail, cache, de, ensure, exec, exec::Command,
        files, log, markdown,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::dispatch;
}

/// Exports a plugin: `viaduct_plugin_sdk::export!(run);` where `run` is a
/// `fn(Context) -> Result<Output>` (any path to one).
///
/// Generates the component's `run` export, which enters `/workspace`, builds
/// the [`Context`] from the host's input, calls `run` and hands its
/// [`Output`] or [`Error`] back to the host. Use it once per crate, at the
/// top level.
#[macro_export]
macro_rules! export {
    ($run:path) => {
        const _: () = {
            struct ViaductPlugin;

            impl $crate::bindings::Guest for ViaductPlugin {
                fn run(
                    input: $crate::bindings::StepInput,
                ) -> ::core::result::Result<$crate::bindings::StepOutput, $crate::bindings::StepError> {
                    $crate::__private::dispatch(input, $run)
                }
            }

    $crate::bindings::__export_step!(ViaductPlugin with_types_in $crate::bindings);
        };
    };
}
