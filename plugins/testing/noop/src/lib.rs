//! `noop`: a test plugin that returns at once, for measuring the runner's
//! per-call overhead (fetch, compile cache, instantiate, call).
//!
//! Not a first-party plugin: the end-to-end tests and benchmarks publish it
//! from `target/plugins-test/noop.wasm`.

#![warn(missing_docs)]

use viaduct_plugin_sdk::prelude::*;

/// Does nothing and succeeds.
pub fn run(_ctx: Context) -> Result<Output> {
    Ok(Output::new())
}

viaduct_plugin_sdk::export!(run);
