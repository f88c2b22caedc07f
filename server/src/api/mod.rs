//! The gRPC API: thin handlers that translate requests into engine calls.
//!
//! Every call passes [`crate::gate`] first: the one place that authenticates,
//! checks the role the method needs (`access::TABLE`), rate-limits, audits
//! and ends revoked streams. Handlers narrow repository-scoped calls with
//! the `Access` the gate hands them. Health and reflection are open, so
//! `grpcurl HOST:PORT list` works without proto files or a token.
//! gRPC-web (tonic-web) is layered on the gRPC routes only, so plain HTTP
//! routes on the same port are untouched.

pub mod admin;
pub mod agent;
pub mod artifacts;
pub mod audit;
pub mod caches;
pub mod debug;
pub mod environments;
pub mod logs;
pub mod pipelines;
pub mod plugins;
pub mod repos;
pub mod runners;
pub mod runs;
pub mod secrets;
pub mod stats;
pub mod tokens;
pub mod transfer;
pub mod users;

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use viaduct_proto::v1::{
    FILE_DESCRIPTOR_SET, admin_server::AdminServer, artifacts_server::ArtifactsServer, audit_server::AuditServer,
    caches_server::CachesServer, debug_server::DebugServer, deployments_server::DeploymentsServer,
    environments_server::EnvironmentsServer, logs_server::LogsServer, pipelines_server::PipelinesServer,
    plugins_server::PluginsServer, repos_server::ReposServer, runner_agent_server::RunnerAgentServer,
    runners_server::RunnersServer, runs_server::RunsServer, secrets_server::SecretsServer,
    services_server::ServicesServer, stats_server::StatsServer, tokens_server::TokensServer, users_server::UsersServer,
};

use crate::{depot::Depot, engine::Engine, triggers::Triggers};

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
    "viaduct.v1.Tokens",
    "viaduct.v1.Users",
    "viaduct.v1.Audit",
    "viaduct.v1.Admin",
    "viaduct.v1.Stats",
    "viaduct.v1.Debug",
    "viaduct.v1.Environments",
    "viaduct.v1.Deployments",
    "viaduct.v1.Services",
];

/// All gRPC services as an axum router (gRPC-web enabled on them), over
/// `engine` and its debug shells `shells` (which the web UI's WebSocket
/// route, `crate::debug_socket`, opens too).
pub async fn grpc_router(
    (engine, shells): (&Arc<Engine>, &Arc<crate::debug::DebugShells>),
    gate: &Arc<crate::gate::Gate>,
    triggers: &Arc<Triggers>,
    depot: &Arc<Depot>,
    store: &Arc<crate::store::Store>,
    secrets: &Arc<crate::secrets::SecretBox>,
    admin: (&Arc<crate::retention::Retention>, &Arc<crate::status::Status>),
) -> anyhow::Result<axum::Router> {
    let auth = &gate.auth;
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
    let environments_api = environments::EnvironmentsApi::new(Arc::clone(store), Arc::clone(engine), Arc::clone(depot));
    let routes = tonic::service::Routes::new(RunsServer::new(runs::RunsApi::new(
        Arc::clone(engine),
        Arc::clone(triggers),
        Arc::clone(store),
    )))
    .add_service(LogsServer::new(logs::LogsApi::new(Arc::clone(engine), Arc::clone(depot))))
    .add_service(PipelinesServer::new(pipelines::PipelinesApi::new(Arc::clone(store), Arc::clone(triggers))))
    .add_service(ReposServer::new(repos::ReposApi::new(Arc::clone(triggers), Arc::clone(&admin.1.forges))))
    .add_service(SecretsServer::new(secrets::SecretsApi::new(Arc::clone(store), Arc::clone(secrets))))
    .add_service(RunnersServer::new(runners::RunnersApi::new(Arc::clone(engine), Arc::clone(auth))))
    .add_service(ArtifactsServer::new(artifacts::ArtifactsApi::new(Arc::clone(depot), Arc::clone(engine))))
    .add_service(CachesServer::new(caches::CachesApi::new(Arc::clone(depot))))
    .add_service(PluginsServer::new(plugins::PluginsApi::new(Arc::clone(depot))))
    .add_service(TokensServer::new(tokens::TokensApi::new(Arc::clone(auth))))
    .add_service(UsersServer::new(users::UsersApi::new(Arc::clone(auth))))
    .add_service(AuditServer::new(audit::AuditApi::new(Arc::clone(&gate.audit))))
    .add_service(StatsServer::new(stats::StatsApi::new(Arc::clone(store), Arc::clone(depot))))
    .add_service(AdminServer::new(admin::AdminApi::new(Arc::clone(admin.0), Arc::clone(admin.1))))
    .add_service(RunnerAgentServer::new(agent::AgentApi::new(
        Arc::clone(engine),
        Arc::clone(auth),
        Arc::clone(triggers),
        Arc::clone(depot),
        Arc::clone(shells),
    )))
    .add_service(DebugServer::new(debug::DebugApi::new(Arc::clone(engine), Arc::clone(shells))))
    .add_service(EnvironmentsServer::new(environments_api.clone()))
    .add_service(DeploymentsServer::new(environments_api.clone()))
    .add_service(ServicesServer::new(environments_api))
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha);
    // The gate sees gRPC-web calls translated (the web layer is outside).
    Ok(routes
        .into_axum_router()
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(gate), crate::gate::check))
        .route_layer(GrpcWebLayer::new()))
}

/// Unknown paths: gRPC clients get UNIMPLEMENTED, a browser's page request
/// the web UI (when `ui` has one), everything else a 404.
pub async fn fallback(ui: Option<Arc<crate::ui::Ui>>, req: Request<Body>) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        tonic::Status::unimplemented(format!("no such method: {}", req.uri().path()))
            .into_http::<Body>()
            .into_response()
    } else if let Some(ui) = ui {
        let (parts, _) = req.into_parts();
        match ui.page(&parts) {
            Some(page) => page,
            None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        }
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}
