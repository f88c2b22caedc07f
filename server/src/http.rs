//! Plain HTTP routes on the gRPC port: liveness, Prometheus metrics, forge
//! webhooks, git smart HTTP and signed artifact downloads.
//!
//! Who may use them (`access::ROUTES`): `/healthz` is open; `/metrics`
//! needs a token with the `read` role globally — or is served without one
//! on its own address (`--metrics-listen`, for a scraper on a private
//! network); git checks roles per repository; webhooks carry the
//! repository's signature and artifact links their own.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};

use crate::{
    depot::Depot,
    engine::Engine,
    gate::{self, Gate},
    repos::smart_http,
    status::Status,
    store::keys::{JobKey, RunId},
    triggers::{Triggers, webhooks},
};

/// `/healthz`, `/metrics`, `/webhooks/{repo}`, `/git/…` and `/artifacts/…`.
pub fn router(
    engine: Arc<Engine>,
    triggers: Arc<Triggers>,
    gate: Arc<Gate>,
    depot: Arc<Depot>,
    status: Arc<Status>,
) -> Router {
    let git = smart_http::GitHttp {
        repos: Arc::clone(triggers.repos()),
        engine: Arc::clone(&engine),
        gate: Arc::clone(&gate),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(signed_metrics))
        .with_state((status, Arc::clone(&depot), gate))
        .merge(
            Router::new()
                .route("/webhooks/{repo}", post(webhooks::handle))
                .route("/webhooks/github-app/{app_id}", post(webhooks::handle_app))
                .with_state(triggers),
        )
        .merge(Router::new().route("/git/{*path}", any(smart_http::handle)).with_state(git))
        .merge(Router::new().route("/artifacts/{run}/{job}/{*name}", get(artifact)).with_state(depot))
}

/// `/metrics` alone, without a token: for `--metrics-listen`.
pub fn metrics_router(status: Arc<Status>, depot: Arc<Depot>) -> Router {
    Router::new()
        .route("/metrics", get(|State((s, d)): State<(Arc<Status>, Arc<Depot>)>| async move { metrics(&s, &d) }))
        .with_state((status, depot))
}

/// `/metrics` on the main port: a token with the `read` role globally.
async fn signed_metrics(
    State((status, depot, gate)): State<(Arc<Status>, Arc<Depot>, Arc<Gate>)>,
    req: axum::extract::Request,
) -> Response {
    let allowed = gate.authenticate(req.headers(), gate::peer_ip(&req)).and_then(|p| match p {
        crate::auth::Principal::Person(c) if c.grants.allows(viaduct_proto::v1::Role::Read, None) => Ok(()),
        _ => Err(crate::error::Error::PermissionDenied(
            "/metrics needs a token with the read role on every repository (or --metrics-listen)".into(),
        )),
    });
    match allowed {
        Ok(()) => metrics(&status, &depot).into_response(),
        Err(e) => gate::http_refusal(&e),
    }
}

fn metrics(status: &Status, depot: &Depot) -> impl IntoResponse + use<> {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::exposition(status, depot))
}

/// The query of a signed artifact link.
#[derive(serde::Deserialize)]
struct Signed {
    expires: i64,
    sig: String,
}

/// `GET /artifacts/{run}/{job}/{name}?expires=…&sig=…`: a download link
/// from `Artifacts.Link`. Always an attachment with `nosniff`, so an HTML
/// artifact can never run as a page of the server's origin.
async fn artifact(
    State(depot): State<Arc<Depot>>,
    Path((run, job, name)): Path<(String, String, String)>,
    Query(q): Query<Signed>,
) -> Response {
    if !depot.artifacts.verify(&job, &name, q.expires, &q.sig) {
        return (StatusCode::FORBIDDEN, "this download link is invalid or has expired\n").into_response();
    }
    let found = RunId::parse(&run)
        .and_then(|r| Ok((r, JobKey::parse(&job)?)))
        .and_then(|(r, j)| depot.artifacts.find(r, Some(j), &name));
    let artifact = match found {
        Ok(a) => a,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    let (file, size) = match depot.blobs.open_read(&artifact.digest).await {
        Ok(f) => f,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    let base = name.rsplit('/').next().unwrap_or("artifact");
    let ascii: String =
        base.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect();
    let encoded = crate::artifacts::percent_encode(base);
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        (header::CACHE_CONTROL, "private, max-age=3600".to_string()),
        (header::ETAG, format!("\"{}\"", artifact.digest)),
    ];
    (headers, Body::from_stream(tokio_util::io::ReaderStream::new(file))).into_response()
}
