//! Plain HTTP routes on the gRPC port: liveness, Prometheus metrics, forge
//! webhooks and git smart HTTP.

use std::{fmt::Write, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::header,
    response::IntoResponse,
    routing::{any, get, post},
};

use crate::{
    auth::Auth,
    engine::Engine,
    triggers::{Triggers, smart_http, webhooks},
};

/// `/healthz`, `/metrics`, `/webhooks/{repo}` and `/git/…`.
pub fn router(engine: Arc<Engine>, triggers: Arc<Triggers>, auth: Arc<Auth>) -> Router {
    let git = smart_http::GitHttp { triggers: Arc::clone(&triggers), auth };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(engine)
        .merge(Router::new().route("/webhooks/{repo}", post(webhooks::handle)).with_state(triggers))
        .merge(Router::new().route("/git/{*path}", any(smart_http::handle)).with_state(git))
}

async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    let m = engine.metrics();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: usize| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("viaduct_queue_depth", "Jobs waiting for a runner.", m.queued);
    gauge("viaduct_jobs_running", "Jobs leased to runners.", m.running);
    gauge("viaduct_runners_connected", "Runners with an open stream.", m.runners_connected);
    gauge("viaduct_runner_slots", "Slots of connected, non-draining runners.", m.slots);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
