//! Viaduct's web UI: a Leptos client-side app compiled to
//! `wasm32-unknown-unknown` that talks to the server only through gRPC-web
//! (the generated `viaduct-proto` clients over `tonic-web-wasm-client`).
//!
//! The crate has two halves:
//! - pure modules (no browser, no Leptos) holding the logic worth testing:
//!   [`ansi`], [`log_buffer`], [`log_window`], [`log_search`],
//!   [`log_anchor`], [`time_format`], [`status`], [`dag`], [`chart`],
//!   [`markdown`], [`shortcuts`], [`run_model`], [`run_filter`],
//!   [`pipeline_inputs`], [`fleet`], [`terminal`], [`backoff`],
//!   [`deployments`]. They build and test on the host (`cargo test -p
//!   viaduct-ui`);
//! - the app (pages, components, the API client, live streams), compiled
//!   only for `wasm32`, whose entry point mounts it on `<body>`.

#![warn(missing_docs)]

pub mod ansi;
pub mod backoff;
pub mod chart;
pub mod dag;
pub mod deployments;
pub mod fleet;
pub mod log_anchor;
pub mod log_buffer;
pub mod log_search;
pub mod log_window;
pub mod markdown;
pub mod pipeline_inputs;
pub mod run_filter;
pub mod run_model;
pub mod shortcuts;
pub mod status;
pub mod terminal;
pub mod time_format;

#[cfg(target_arch = "wasm32")]
mod app;

/// The wasm entry point: mounts the app on `<body>`.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    app::mount();
}
