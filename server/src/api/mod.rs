//! The gRPC API: thin handlers that translate requests into engine calls.
//!
//! Every user-facing service sits behind the admin-token interceptor;
//! `RunnerAgent` authenticates runners itself (registration token in the
//! request, runner token on Connect). Health and reflection are open, so
//! `grpcurl -plaintext HOST:PORT list` works without proto files or a token.
//! gRPC-web (tonic-web) is layered on the gRPC routes only, so plain HTTP
//! routes on the same port are untouched.

pub mod agent;
pub mod artifacts;
pub mod caches;
pub mod logs;
pub mod pipelines;
pub mod plugins;
pub mod repos;
pub mod runners;
pub mod runs;
pub mod secrets;
pub mod transfer;

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use viaduct_proto::v1::{
    FILE_DESCRIPTOR_SET, artifacts_server::ArtifactsServer, caches_server::CachesServer, logs_server::LogsServer,
    pipelines_server::PipelinesServer, plugins_server::PluginsServer, repos_server::ReposServer,
    runner_agent_server::RunnerAgentServer, runners_server::RunnersServer, runs_server::RunsServer,
    secrets_server::SecretsServer,
};

use crate::{auth::Auth, depot::Depot, engine::Engine, triggers::Triggers};

/// Fully qualified names of the services we serve, for health.
const SERVICES: &[&str] = &[
    "viaduct.v1.Runs",
    "viaduct.v1.Logs",
    "viaduct.v1.Pipelines",
    "viaduct.v1.Runners",
    "viaduct.v1.RunnerAgent",
    "viaduct.v1.Repos",
    "viaduct.v1.Secrets",
    "viaduct.v1.Plugins",
    "viaduct.v1.Artifacts",
    "viaduct.v1.Caches",
];

/// All gRPC services as an axum router (gRPC-web enabled on them).
pub async fn grpc_router(
    engine: &Arc<Engine>,
    auth: &Arc<Auth>,
    triggers: &Arc<Triggers>,
    depot: &Arc<Depot>,
) -> anyhow::Result<axum::Router> {
    let admin = auth.admin_interceptor();
    // Plugins are read by runners too; Publish checks for an admin itself.
    let admin_or_runner = auth.principal_interceptor();
    let (health, health_service) = tonic_health::server::health_reporter();
    for s in SERVICES {
        health.set_service_status(*s, ServingStatus::Serving).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let routes = tonic::service::Routes::new(RunsServer::with_interceptor(
        runs::RunsApi::new(Arc::clone(engine), Arc::clone(triggers)),
        admin.clone(),
    ))
    .add_service(LogsServer::with_interceptor(logs::LogsApi::new(Arc::clone(engine)), admin.clone()))
    .add_service(PipelinesServer::with_interceptor(
        pipelines::PipelinesApi::new(Arc::clone(engine), Arc::clone(triggers)),
        admin.clone(),
    ))
    .add_service(ReposServer::with_interceptor(repos::ReposApi::new(Arc::clone(triggers)), admin.clone()))
    .add_service(SecretsServer::with_interceptor(secrets::SecretsApi::new(Arc::clone(engine)), admin.clone()))
    .add_service(RunnersServer::with_interceptor(
        runners::RunnersApi::new(Arc::clone(engine), Arc::clone(auth)),
        admin.clone(),
    ))
    .add_service(ArtifactsServer::with_interceptor(artifacts::ArtifactsApi::new(Arc::clone(depot)), admin.clone()))
    .add_service(CachesServer::with_interceptor(caches::CachesApi::new(Arc::clone(depot)), admin.clone()))
    .add_service(PluginsServer::with_interceptor(plugins::PluginsApi::new(Arc::clone(depot)), admin_or_runner))
    .add_service(RunnerAgentServer::new(agent::AgentApi::new(
        Arc::clone(engine),
        Arc::clone(auth),
        Arc::clone(triggers),
        Arc::clone(depot),
    )))
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha);
    Ok(routes.into_axum_router().route_layer(GrpcWebLayer::new()))
}

/// Unknown paths: gRPC clients get UNIMPLEMENTED, a browser's page request
/// the web UI (when `ui` has one), everything else a 404.
pub async fn fallback(ui: Option<Arc<std::path::Path>>, req: Request<Body>) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        tonic::Status::unimplemented(format!("no such method: {}", req.uri().path()))
            .into_http::<Body>()
            .into_response()
    } else if let Some(dir) = ui {
        // Only the head: a body is not `Sync`, so a reference to the whole
        // request must not be held across an await.
        let (parts, _) = req.into_parts();
        match crate::ui::page(&dir, &parts).await {
            Some(page) => page,
            None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        }
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}
