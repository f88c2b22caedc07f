//! Plain HTTP routes on the gRPC port: liveness and Prometheus metrics.

use std::{fmt::Write, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

use crate::engine::Engine;

/// `/healthz` and `/metrics`.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/metrics", get(metrics)).with_state(engine)
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
