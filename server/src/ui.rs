//! The web UI bundle, served on the gRPC port: `/assets/*` (content-hashed
//! names, so cached for a year and never revalidated; gzip and brotli
//! copies made at build time are sent to browsers that accept them) and
//! `index.html` for every other page a browser navigates to (the UI routes
//! on the client; `no-cache`, so a new bundle is picked up at once).
//!
//! The bundle is a directory built by `cargo xtask ui` (`target/ui`): the
//! server reads it from disk, so it never embeds or builds the UI itself.
//!
//! Pages carry a strict Content-Security-Policy: scripts only from this
//! origin or the page's own inline scripts by their SHA-256 (computed here
//! from `index.html`, so a changed bundle never needs a hand-edited
//! policy), WebAssembly compiled, no plugins, frames, foreign forms or
//! connections; style attributes are allowed (the log view positions rows
//! with them), style sheets only from this origin.

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
    let csp = content_security_policy(&String::from_utf8_lossy(&html));
    Some(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
                (header::CACHE_CONTROL, "no-cache".to_string()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                (header::X_FRAME_OPTIONS, "DENY".to_string()),
                (header::REFERRER_POLICY, "no-referrer".to_string()),
                (header::CONTENT_SECURITY_POLICY, csp),
            ],
            html,
        )
            .into_response(),
    )
}

/// The policy of a page whose HTML is `html`: its inline scripts allowed
/// by hash, nothing else inline.
pub fn content_security_policy(html: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut hashes = String::new();
    let mut rest = html;
    while let Some(open) = rest.find("<script") {
        let after = &rest[open..];
        let Some(tag_end) = after.find('>') else { break };
        let body = &after[tag_end + 1..];
        let Some(close) = body.find("</script>") else { break };
        // Only inline scripts (no `src`) need a hash.
        if !after[..tag_end].contains(" src=") {
            let digest = sha2::Sha256::digest(&body.as_bytes()[..close]);
            hashes.push_str(&format!(" 'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest)));
        }
        rest = &body[close..];
    }
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'{hashes}; style-src 'self'; \
         style-src-attr 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
         manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn inline_scripts_are_allowed_by_hash_and_nothing_else_inline() {
        let csp = super::content_security_policy(
            "<script>a()</script><script src=\"/x.js\"></script><script type=\"module\">b()</script>",
        );
        // sha256("a()") and sha256("b()"), base64.
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        let scripts = csp.split(';').find(|d| d.trim().starts_with("script-src")).expect("script-src");
        assert!(!scripts.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }
}
