//! The Viaduct server: the gRPC API, storage in sled, the scheduler, and the
//! log store. See ARCHITECTURE.md for the map.
//!
//! Layers, from the wire inwards:
//! - [`api`] (gRPC handlers) and [`http`] (plain HTTP routes) translate
//!   requests into calls on the [`engine::Engine`] and back; [`error`] maps
//!   domain errors to gRPC statuses in one place;
//! - [`planning`] turns pipeline files and inline jobs into run plans (with
//!   the `viaduct-pipeline` crate);
//! - [`engine`] owns every state transition of runs, jobs and steps, the
//!   queue, runner sessions and leases;
//! - [`store`] is the sled database: trees, records, log chunks, group
//!   commit.

pub mod api;
pub mod auth;
pub mod convert;
pub mod engine;
pub mod error;
pub mod http;
pub mod planning;
pub mod store;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;

use crate::{auth::Auth, engine::EngineConfig, store::Store};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (gRPC, gRPC-web and HTTP share it).
    pub listen: SocketAddr,
    /// Where the database and the token files live.
    pub data_dir: PathBuf,
    /// Scheduling settings.
    pub engine: EngineConfig,
}

/// Runs the server until `shutdown` resolves.
///
/// Once listening, it writes the bound address (useful with port 0) to
/// `DATA_DIR/address`.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let store = Arc::new(
        Store::open(&cfg.data_dir.join("db"))
            .with_context(|| format!("cannot open the database in {}", cfg.data_dir.display()))?,
    );
    let auth = Arc::new(Auth::new(Arc::clone(&store)));
    let (admin, runner) = auth.bootstrap(&cfg.data_dir).await?;
    let engine = engine::Engine::open(Arc::clone(&store), cfg.engine.clone())?;
    engine.spawn_timer();

    let app = api::grpc_router(&engine, &auth).await?.merge(http::router(Arc::clone(&engine))).fallback(api::fallback);
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let addr_file = cfg.data_dir.join("address");
    let tmp = cfg.data_dir.join("address.tmp");
    std::fs::write(&tmp, format!("{addr}\n")).and_then(|()| std::fs::rename(&tmp, &addr_file))?;
    tracing::info!(
        %addr,
        admin_token = %admin.display(),
        runner_registration_token = %runner.display(),
        "viaduct-server listening on http://{addr}"
    );
    // Our own listener (to learn the bound port), so TCP options are set on
    // the incoming stream: without TCP_NODELAY every small gRPC message
    // waits ~40 ms for delayed ACKs.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_routes(tonic::service::Routes::from(app))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    store.flush()?;
    tracing::info!("viaduct-server stopped");
    Ok(())
}
