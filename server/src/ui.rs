//! The web UI bundle, served on the gRPC port: `/assets/*` (content-hashed
//! names, so cached for a year and never revalidated; gzip and brotli
//! copies made at build time are sent to browsers that accept them) and
//! `index.html` for every other page a browser navigates to (the UI routes
//! on the client; `no-cache`, so a new bundle is picked up at once).
//!
//! The bundle is a directory built by `cargo xtask ui` (`target/ui`): the
//! server reads it from disk, so it never embeds or builds the UI itself.

use std::path::Path;

use axum::{
    Router,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower_http::{services::ServeDir, set_header::SetResponseHeaderLayer};

/// Cache policy of content-hashed assets.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Why a UI directory cannot be served.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.join("index.html").is_file(),
        "{} has no index.html: build the UI with `cargo xtask ui`",
        dir.display()
    );
    Ok(())
}

/// The `/assets` routes over `dir/assets`.
pub fn assets(dir: &Path) -> Router {
    let files = ServeDir::new(dir.join("assets")).precompressed_br().precompressed_gzip();
    Router::new()
        .nest_service("/assets", files)
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)))
}

/// `index.html` for a browser's page request (a GET that accepts HTML), or
/// `None` when `req` is something else (an API client, a missing file).
pub async fn page(dir: &Path, req: &axum::http::request::Parts) -> Option<Response> {
    let accepts_html =
        req.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    if req.method != Method::GET || !accepts_html || req.uri.path().starts_with("/assets/") {
        return None;
    }
    let html = match tokio::fs::read(dir.join("index.html")).await {
        Ok(html) => html,
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot read the UI's index.html");
            return Some((StatusCode::SERVICE_UNAVAILABLE, "the web UI is not built\n").into_response());
        }
    };
    Some(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            html,
        )
            .into_response(),
    )
}
