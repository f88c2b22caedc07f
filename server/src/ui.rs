//! The web UI bundle, served on the gRPC port: `/assets/*` (content-hashed
//! names, so cached for a year and never revalidated; gzip and brotli
//! copies made at build time are sent to browsers that accept them) and
//! `index.html` for every other page a browser navigates to (the UI routes
//! on the client; `no-cache`, so a new bundle is picked up at once).
//!
//! The bundle is what `cargo xtask ui` builds (`target/ui`: `index.html`
//! and `assets/`), from one of two sources, read into memory once at start
//! ([`Ui::from_dir`], [`Ui::embedded`]) and then served by the same code:
//! `--ui-dir` (development: a rebuilt bundle needs a restart), else the
//! bundle a release build embeds (`viaduct_bundle::ui`). The server never
//! builds the UI itself.
//!
//! Pages carry a strict Content-Security-Policy: scripts only from this
//! origin or the page's own inline scripts by their SHA-256 (computed here
//! from `index.html`, so a changed bundle never needs a hand-edited
//! policy), WebAssembly compiled, no plugins, frames, foreign forms or
//! connections; style attributes are allowed (the log view positions rows
//! with them), style sheets only from this origin.

use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::Path as UrlPath,
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// Cache policy of content-hashed assets.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The bundle, in memory: `index.html` with its policy, and the assets.
#[derive(Debug)]
pub struct Ui {
    /// `index.html`.
    page: Bytes,
    /// The page's Content-Security-Policy.
    csp: String,
    /// Files under `assets/`, by their path below it (`x.js`, `x.js.br`).
    assets: HashMap<String, Bytes>,
    /// Where the bundle came from (for the log).
    source: String,
}

impl Ui {
    /// The bundle in `dir` (`--ui-dir`), read once.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dir.join("index.html").is_file(),
            "{} has no index.html: build the UI with `cargo xtask ui`",
            dir.display()
        );
        let mut files = Vec::new();
        read_tree(dir, dir, &mut files).with_context(|| format!("cannot read the UI bundle in {}", dir.display()))?;
        Self::from_files(files, dir.display().to_string())
    }

    /// The bundle this build embeds; `None` when it embeds none.
    pub fn embedded() -> anyhow::Result<Option<Self>> {
        let files = viaduct_bundle::ui();
        if files.is_empty() {
            return Ok(None);
        }
        let files = files.iter().map(|f| (f.path.to_string(), Bytes::from_static(f.bytes)));
        Self::from_files(files, "embedded in this build".into()).map(Some)
    }

    /// The bundle made of `files` (paths relative to its root, with `/`).
    fn from_files(files: impl IntoIterator<Item = (String, Bytes)>, source: String) -> anyhow::Result<Self> {
        let mut page = None;
        let mut assets = HashMap::new();
        for (path, bytes) in files {
            if path == "index.html" {
                page = Some(bytes);
            } else if let Some(asset) = path.strip_prefix("assets/") {
                assets.insert(asset.to_string(), bytes);
            }
        }
        let page = page.with_context(|| format!("the UI bundle ({source}) has no index.html"))?;
        let csp = content_security_policy(&String::from_utf8_lossy(&page));
        Ok(Self { page, csp, assets, source })
    }

    /// Where the bundle came from and how many assets it has (for the log).
    pub fn describe(&self) -> String {
        format!("{} ({} assets)", self.source, self.assets.len())
    }

    /// The `/assets` routes.
    pub fn assets(self: &Arc<Self>) -> Router {
        let ui = Arc::clone(self);
        Router::new().route(
            "/assets/{*path}",
            get(move |UrlPath(path): UrlPath<String>, headers: HeaderMap| async move { ui.asset(&path, &headers) }),
        )
    }

    /// An asset, precompressed when the client accepts it.
    fn asset(&self, path: &str, headers: &HeaderMap) -> Response {
        let Some(plain) = self.assets.get(path) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let accepted = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (encoding, body) = [("br", ".br"), ("gzip", ".gz")]
            .into_iter()
            .filter(|(coding, _)| accepts(accepted, coding))
            .find_map(|(coding, ext)| self.assets.get(&format!("{path}{ext}")).map(|b| (Some(coding), b)))
            .unwrap_or((None, plain));
        let mut response = (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, IMMUTABLE),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::VARY, "accept-encoding"),
            ],
            body.clone(),
        )
            .into_response();
        if let Some(coding) = encoding {
            response.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static(coding));
        }
        response
    }

    /// `index.html` for a browser's page request (a GET that accepts HTML),
    /// or `None` when `req` is something else (an API client, an asset).
    pub fn page(&self, req: &axum::http::request::Parts) -> Option<Response> {
        let accepts_html =
            req.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
        if req.method != Method::GET || !accepts_html || req.uri.path().starts_with("/assets/") {
            return None;
        }
        Some(
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
                    (header::CACHE_CONTROL, "no-cache".to_string()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                    (header::X_FRAME_OPTIONS, "DENY".to_string()),
                    (header::REFERRER_POLICY, "no-referrer".to_string()),
                    (header::CONTENT_SECURITY_POLICY, self.csp.clone()),
                ],
                self.page.clone(),
            )
                .into_response(),
        )
    }
}

/// The bundle to serve: `--ui-dir` when given, else the embedded one, else
/// none (logged either way).
pub fn load(dir: Option<&Path>) -> anyhow::Result<Option<Arc<Ui>>> {
    let ui = match dir {
        Some(dir) => Some(Ui::from_dir(dir)?),
        None => Ui::embedded()?,
    };
    match &ui {
        Some(ui) => tracing::info!(source = %ui.describe(), "web UI served at /"),
        None => tracing::info!("no web UI: this build embeds none and --ui-dir is not given"),
    }
    Ok(ui.map(Arc::new))
}

/// Whether an `Accept-Encoding` value accepts `coding` (listed without
/// `q=0`).
fn accepts(header: &str, coding: &str) -> bool {
    header.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused =
            parts.any(|p| p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0));
        name.eq_ignore_ascii_case(coding) && !refused
    })
}

/// The media type of an asset, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Every file under `dir`, as (path relative to `root` with `/`, bytes).
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, Bytes)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Directories are entered, not linked ones (no loops); linked files are read.
        if entry.file_type()?.is_dir() {
            read_tree(root, &path, out)?;
        } else if let Some(rel) = path.strip_prefix(root).ok().and_then(Path::to_str) {
            out.push((rel.replace(std::path::MAIN_SEPARATOR, "/"), Bytes::from(std::fs::read(&path)?)));
        }
    }
    Ok(())
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
    use super::*;

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

    fn bundle() -> Ui {
        let files = [
            ("index.html", "<script>go()</script>"),
            ("assets/app-1.js", "js"),
            ("assets/app-1.js.br", "br"),
            ("assets/app-1.js.gz", "gz"),
            ("assets/app-1.wasm", "wasm"),
            ("elsewhere.txt", "not served"),
        ];
        Ui::from_files(files.map(|(p, b)| (p.to_string(), Bytes::from_static(b.as_bytes()))), "test".into())
            .expect("a bundle")
    }

    fn get(ui: &Ui, path: &str, encodings: &str) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, encodings.parse().expect("a header"));
        ui.asset(path, &headers)
    }

    #[test]
    fn assets_are_immutable_typed_and_precompressed_when_accepted() {
        let ui = bundle();
        let r = get(&ui, "app-1.js", "gzip, br");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "br");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(r.headers()[header::CACHE_CONTROL], IMMUTABLE);
        assert_eq!(get(&ui, "app-1.js", "gzip").headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(get(&ui, "app-1.js", "br;q=0, gzip").headers()[header::CONTENT_ENCODING], "gzip");
        assert!(get(&ui, "app-1.js", "identity").headers().get(header::CONTENT_ENCODING).is_none());
        // No compressed copy: the file itself.
        let wasm = get(&ui, "app-1.wasm", "br");
        assert!(wasm.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(wasm.headers()[header::CONTENT_TYPE], "application/wasm");
        assert_eq!(get(&ui, "nope.js", "br").status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&ui, "../elsewhere.txt", "").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn pages_carry_the_policy_of_the_bundled_page() {
        let ui = bundle();
        let req = |method: Method, path: &str, accept: &str| {
            let (parts, ()) = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::ACCEPT, accept)
                .body(())
                .expect("a request")
                .into_parts();
            ui.page(&parts)
        };
        let page = req(Method::GET, "/runs/1", "text/html").expect("a page");
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
        assert_eq!(csp, content_security_policy("<script>go()</script>"));
        assert!(req(Method::GET, "/runs/1", "application/json").is_none());
        assert!(req(Method::POST, "/runs/1", "text/html").is_none());
        assert!(req(Method::GET, "/assets/nope.js", "text/html").is_none());
    }

    #[test]
    fn a_bundle_without_its_page_is_refused() {
        let err = Ui::from_files([("assets/a.js".to_string(), Bytes::new())], "x".into()).expect_err("no page");
        assert!(err.to_string().contains("no index.html"), "{err}");
    }
}
