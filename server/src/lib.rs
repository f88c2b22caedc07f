//! The Viaduct server: the gRPC API, storage (sled by default, behind `store::kv::Kv`), the scheduler, and the
//! log store. See ARCHITECTURE.md for the map.
//!
//! Layers, from the wire inwards:
//! - [`api`] (gRPC handlers) and [`http`] (plain HTTP routes; [`ui`] serves
//!   the web UI bundle) translate requests into calls on the [`engine::Engine`] and back; [`error`] maps
//!   domain errors to gRPC statuses in one place;
//! - [`launch`] is the one way to start a run: pipeline files and inline
//!   jobs resolved (with the `viaduct-pipeline` crate) into runs to create;
//!   [`triggers`] decide what repository events and schedules start, on
//!   the [`repos`] the server holds;
//! - [`engine`] owns every state transition of runs, jobs and steps, the
//!   queue, runner sessions and leases;
//! - [`store`] is the database (behind the `Kv` backend trait): trees, records, log chunks, group
//!   commit;
//! - [`depot`] keeps files in the content-addressed [`blobs`] store —
//!   [`plugins`], [`caches`], [`artifacts`] — and their retention.

pub mod access;
pub mod api;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod caches;
pub mod convert;
pub mod debug;
pub mod debug_socket;
pub mod depot;
pub mod engine;
pub mod environments;
pub mod error;
pub mod forges;
pub mod gate;
pub mod git;
pub mod http;
pub mod launch;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod packed_logs;
pub mod pipelines;
pub mod plugins;
pub mod probes;
pub mod replicas;
pub mod repos;
pub mod retention;
pub mod runner_events;
pub mod secrets;
pub mod sign_in;
pub mod snapshots;
pub mod source_archives;
pub mod space;
pub mod sso;
pub mod stats;
pub mod status;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod triggers;
pub mod trust;
pub mod ui;
pub mod upgrades;
pub mod users;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;

use crate::{auth::Auth, engine::EngineConfig, store::Store};

/// Where the server's state lives.
#[derive(Clone, Default)]
pub enum StoreConfig {
    /// sled under `DATA_DIR/db` (the default).
    #[default]
    Sled,
    /// A PostgreSQL database.
    Postgres {
        /// `postgres://USER@HOST:PORT/DB` (no password in it).
        url: String,
        /// The password, read from its file.
        password: Option<String>,
        /// A CA (PEM) trusted for TLS to the database besides the system's
        /// roots (`--store-ca-file`).
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sled => f.write_str("Sled"),
            Self::Postgres { url, password, ca_file } => f
                .debug_struct("Postgres")
                .field("url", url)
                .field("password", &password.as_ref().map(|_| "***"))
                .field("ca_file", ca_file)
                .finish(),
        }
    }
}

impl StoreConfig {
    /// `sled`, or a PostgreSQL URL whose password (if any) is in
    /// `password_file`, with a CA for its TLS in `ca_file`.
    pub fn parse(
        spec: &str,
        password_file: Option<&std::path::Path>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        if spec == "sled" {
            anyhow::ensure!(password_file.is_none(), "--store-password-file goes with a PostgreSQL --store");
            anyhow::ensure!(ca_file.is_none(), "--store-ca-file goes with a PostgreSQL --store");
            return Ok(Self::Sled);
        }
        anyhow::ensure!(
            spec.starts_with("postgres://") || spec.starts_with("postgresql://"),
            "--store must be `sled` or a postgres:// URL (the value given is not repeated here: it may hold a password)"
        );
        store::postgres::check_url(spec)?;
        let password = password_file
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                    .with_context(|| format!("cannot read {}", f.display()))
            })
            .transpose()?;
        Ok(Self::Postgres { url: spec.to_string(), password, ca_file: ca_file.map(PathBuf::from) })
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (gRPC, gRPC-web and HTTP share it).
    pub listen: SocketAddr,
    /// Where the token files, blobs, repositories (and the sled database)
    /// live.
    pub data_dir: PathBuf,
    /// Where the server's state lives.
    pub store: StoreConfig,
    /// Bytes of sled's page cache (`--store-cache`).
    pub store_cache: u64,
    /// Where blobs (caches, artifacts, plugin components) live.
    pub blobs: blobs::BlobConfig,
    /// Scheduling settings.
    pub engine: EngineConfig,
    /// URL clients and forges reach the server at (clone and webhook URLs);
    /// default `http://<listen address>`.
    pub public_url: Option<String>,
    /// The clock of cron schedules (a faster one in tests).
    pub clock: triggers::schedule::Clock,
    /// How late a missed schedule slot may still fire after a downtime.
    pub schedule_catch_up: std::time::Duration,
    /// Blob store limits and retention.
    pub depot: depot::DepotConfig,
    /// How long runs and events are kept.
    pub retention: retention::RetentionConfig,
    /// Bytes kept free on the data directory's disk: below, new work is
    /// refused (see `space`).
    pub min_free_disk: u64,
    /// Plugins to publish at start (`NAME.wasm` + `NAME.toml`) instead of
    /// the first-party plugins this build embeds.
    pub plugins_dir: Option<PathBuf>,
    /// The web UI bundle to serve at `/` (`cargo xtask ui` builds it)
    /// instead of the one this build embeds.
    pub ui_dir: Option<PathBuf>,
    /// TLS on the port (`None`: plaintext).
    pub tls: Option<tls::TlsFiles>,
    /// Abuse limits (failed authentications, calls per token).
    pub limits: throttle::Limits,
    /// Serve `/metrics` without a token on this address too.
    pub metrics_listen: Option<SocketAddr>,
    /// The mail server of email notifications.
    pub smtp: Option<notify::SmtpConfig>,
    /// Single sign-on groups → grants.
    pub group_roles: users::GroupRoles,
    /// Single sign-on with an OpenID provider.
    pub sso: Option<sso::SsoConfig>,
    /// How long a web UI session lasts.
    pub session_ttl: std::time::Duration,
    /// Run as one of several replicas on one PostgreSQL database.
    pub replica: Option<replicas::ReplicaConfig>,
    /// The secret key's file (default `DATA_DIR/secret-key`); replicas
    /// share one.
    pub secret_key_file: Option<PathBuf>,
}

/// How long a shutdown waits for open requests and streams.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the server until `shutdown` resolves.
///
/// Once listening, it writes the bound address (useful with port 0) to
/// `DATA_DIR/address`.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    // SIGHUP reloads the TLS certificate (`tls`); without TLS it must not
    // end the process (`systemctl reload`).
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: the TLS certificate, if any, is read again");
            }
        });
    }
    if cfg.replica.is_some() {
        return replicas::run(cfg, shutdown).await;
    }
    serve_engine(cfg, None, shutdown).await
}

/// The server with its engine: alone, or as the replica that leads (whose
/// every write is checked against `fence`).
pub(crate) async fn serve_engine(
    cfg: Config,
    fence: Option<store::Fence>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let replica = fence.is_some();
    let store = Arc::new(match (&cfg.store, fence) {
        (StoreConfig::Sled, _) => Store::open_with_cache(&cfg.data_dir.join("db"), cfg.store_cache)
            .with_context(|| format!("cannot open the database in {}", cfg.data_dir.display()))?,
        (StoreConfig::Postgres { url, password, ca_file }, None) => {
            Store::postgres(url, password.as_deref(), ca_file.as_deref()).context("cannot open the PostgreSQL store")?
        }
        (StoreConfig::Postgres { url, password, ca_file }, Some(fence)) => {
            Store::postgres_leader(url, password.as_deref(), ca_file.as_deref(), fence)
                .context("cannot open the PostgreSQL store")?
        }
    });
    let mutual = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let users = Arc::new(users::Users::new(Arc::clone(&store), cfg.group_roles.clone()));
    let auth = Arc::new(Auth::new(Arc::clone(&store), users).with_runner_certs(mutual));
    let (admin, runner) = auth.bootstrap(&cfg.data_dir).await?;
    let secret_box = Arc::new(match &cfg.secret_key_file {
        Some(file) => secrets::SecretBox::open_file(file)?,
        None => secrets::SecretBox::open(&cfg.data_dir)?,
    });
    let link_key = secret_box.derive_key("viaduct artifact download links v1");
    let blobs = blobs::BlobStore::open(&cfg.blobs, &cfg.data_dir).await.context("cannot open the blob store")?;
    tracing::info!(blobs = %blobs.describe(), "blob store");
    let depot = depot::Depot::new(blobs, &store, cfg.depot, link_key);
    depot.plugins.publish_first_party(cfg.plugins_dir.as_deref()).await?;
    // A replica's local blobs are its own: a successor could not read logs
    // packed there, so with replicas they stay in the database unless the
    // blobs are shared (object storage).
    let packing = !replica || !matches!(cfg.blobs, blobs::BlobConfig::Local);
    if packing {
        depot.spawn_packing();
    }
    let started_ms = store::now_ms();
    let room = Arc::new(space::DiskRoom::new(cfg.data_dir.clone(), cfg.min_free_disk));
    let engine_cfg = engine::EngineConfig {
        durable_sends: matches!(cfg.store, StoreConfig::Postgres { .. }) || cfg.engine.durable_sends,
        room: Arc::clone(&room) as Arc<dyn engine::room::Room>,
        discard_unpacked: !packing,
        ..cfg.engine.clone()
    };
    let engine = engine::Engine::open(Arc::clone(&store), engine_cfg, Arc::clone(&secret_box))?;
    engine.spawn_timer();
    depot.spawn_retention(Arc::clone(&engine));
    let retention = retention::Retention::new(Arc::clone(&engine), Arc::clone(&store), cfg.retention.clone());
    retention.spawn();
    let exe = std::env::current_exe().context("cannot locate the server binary (for git hooks)")?;
    let repos = repos::Repos::new((Arc::clone(&store), Arc::clone(&secret_box)), cfg.data_dir.clone(), exe);
    let forges =
        forges::Forges::new(Arc::clone(&store), Arc::clone(&repos), (Arc::clone(&engine), Arc::clone(&depot)))?;
    forges.spawn(engine.signals().statuses.subscribe());
    let notifier =
        notify::Notifier::new(Arc::clone(&store), Arc::clone(&secret_box), Arc::clone(&repos), cfg.smtp.clone())?;
    notifier.spawn(engine.signals().statuses.subscribe());
    let status = Arc::new(status::Status {
        engine: Arc::clone(&engine),
        store: Arc::clone(&store),
        retention: Arc::clone(&retention),
        room,
        sled_dir: matches!(cfg.store, StoreConfig::Sled).then(|| cfg.data_dir.join("db")),
        started_ms,
        forges,
        notifier,
    });
    let triggers = triggers::Triggers::new(
        Arc::clone(&engine),
        Arc::clone(&store),
        Arc::clone(&repos),
        triggers::schedule::Schedules::new(cfg.clock, cfg.schedule_catch_up),
        Arc::clone(&depot.plugins),
    );
    probes::Prober::new(Arc::clone(&store), Arc::clone(&engine), Arc::clone(&depot.plugins))?
        .spawn(engine.signals().services.subscribe());

    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let tls = cfg.tls.clone().map(tls::Tls::new).transpose()?.map(Arc::new);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = cfg.public_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
    repos.set_public_url(public_url.clone());
    let gate = Arc::new(gate::Gate {
        auth: Arc::clone(&auth),
        audit: Arc::new(audit::AuditLog::open(Arc::clone(&store))?),
        throttle: Arc::new(throttle::Throttle::new(cfg.limits)),
    });
    auth.spawn_last_use_writer();
    api::agent::spawn_ephemeral_sweeper(Arc::clone(&engine), Arc::clone(&auth));
    let sso = cfg.sso.clone().map(|c| sso::Sso::new(c, &public_url)).transpose()?;
    let sign_in = Arc::new(sign_in::SignIn::new(sso, Arc::clone(&gate), cfg.session_ttl));
    // One set of debug shells: `Debug.Shell` and the web UI's WebSocket.
    let shells = debug::DebugShells::new(Arc::clone(&engine), Arc::clone(&gate.audit));
    let mut app =
        api::grpc_router((&engine, &shells), &gate, &triggers, &depot, &store, &secret_box, (&retention, &status))
            .await?
            .merge(http::router(
                Arc::clone(&engine),
                Arc::clone(&triggers),
                Arc::clone(&gate),
                Arc::clone(&depot),
                Arc::clone(&status),
            ))
            .merge(sign_in::router(sign_in))
            .merge(debug_socket::router(Arc::new(debug_socket::DebugSocket {
                engine: Arc::clone(&engine),
                gate: Arc::clone(&gate),
                shells,
                public_url: public_url.clone(),
            })));
    if let Some(addr) = cfg.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (metrics)"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics served without a token");
        let metrics = http::metrics_router(Arc::clone(&status), Arc::clone(&depot));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, metrics).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    // The web UI: --ui-dir, else the bundle this build embeds.
    let ui = ui::load(cfg.ui_dir.as_deref())?;
    if let Some(ui) = &ui {
        app = app.merge(ui.assets());
    }
    let mut app = app.fallback(move |req: axum::extract::Request| api::fallback(ui.clone(), req));
    if cfg.replica.is_some() {
        // Followers name their clients: the limits and the audit log see
        // them, not the follower.
        let key = Arc::new(secret_box.derive_key(replicas::client_ip::KEY_CONTEXT));
        app = app.layer(axum::middleware::from_fn(move |req, next| {
            replicas::client_ip::trust_forwarded(Arc::clone(&key), req, next)
        }));
    }
    write_atomically(&cfg.data_dir, "address", &format!("{addr}\n"))?;
    // Local tools (the git hook) reach a TLS server over a plaintext
    // listener on loopback only, announced in `local-address`.
    let local = match &tls {
        Some(_) => {
            let l = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
            write_atomically(&cfg.data_dir, "local-address", &format!("{}\n", l.local_addr()?))?;
            Some(l)
        }
        None => {
            let _ = std::fs::remove_file(cfg.data_dir.join("local-address"));
            None
        }
    };
    tracing::info!(
        %addr,
        admin_token = %admin.display(),
        runner_registration_token = %runner.display(),
        "viaduct-server listening on {scheme}://{addr}"
    );
    triggers.start().await;
    // A graceful shutdown waits for open connections, but runner streams,
    // `Runs.Watch` and `Logs.Follow` never end by themselves: after the
    // signal, requests in flight get a grace period, then everything is
    // dropped (all state is already durable; runners reconnect).
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let stop = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    tokio::spawn(stop);
    // The debug shell's WebSocket connections are served with `app` itself
    // (`upgrades`), every other connection by tonic.
    let routes = tonic::service::Routes::from(app.clone());
    let (stopping_main, stopping_local) = (stopping.clone(), stopping.clone());
    let main = async {
        match &tls {
            Some(tls) => {
                tls.spawn_reloader();
                serve((routes.clone(), app.clone()), tls.incoming(listener), stopping_main).await
            }
            None => serve((routes.clone(), app.clone()), plain(listener), stopping_main).await,
        }
    };
    let local = async {
        match local {
            Some(l) => serve((routes.clone(), app.clone()), plain(l), stopping_local).await,
            None => std::future::pending().await,
        }
    };
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        served = main => served,
        served = local => served,
        () = grace => {
            tracing::info!(grace = ?SHUTDOWN_GRACE, "closing the streams still open");
            Ok(())
        }
    };
    if let Err(e) = auth.write_back_last_use() {
        tracing::warn!(error = %e, "cannot record the tokens' last use");
    }
    // Also when serving failed: what was committed and is held in memory
    // (write-back) is written before the process ends.
    let flushed = store.flush();
    served?;
    flushed?;
    tracing::info!("viaduct-server stopped");
    Ok(())
}

/// Writes `DATA_DIR/name` whole or not at all.
pub(crate) fn write_atomically(dir: &std::path::Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(name)))
}

/// Plain TCP connections of `listener`. Our own listener (to learn the
/// bound port), so TCP options are set on each stream: without
/// TCP_NODELAY every small gRPC message waits ~40 ms for delayed ACKs.
fn plain(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)))
}

/// Serves `routes` on `incoming` until `stopping` turns true — the
/// connections that open a WebSocket with `app` (`upgrades`), the others
/// with tonic.
async fn serve<IO, IE>(
    (routes, app): (tonic::service::Routes, axum::Router),
    incoming: impl tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut signal = stopping.clone();
    let stopped = async move {
        let _ = signal.wait_for(|s| *s).await;
    };
    let incoming = upgrades::divert(incoming, app, stopping);
    tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // Large transfers (caches, artifacts, plugin uploads) would stall
        // on HTTP/2's default 64 KiB windows.
        .initial_stream_window_size(Some(viaduct_sdk::STREAM_WINDOW))
        .initial_connection_window_size(Some(viaduct_sdk::CONNECTION_WINDOW))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stopped)
        .await
}

/// What the post-receive hook of a hosted repository runs: asks the server
/// (found through `data_dir/address`, authenticated with the admin token
/// there) to sync repository `repo`, and prints the runs it started — git
/// shows them to the pusher as `remote: …` lines.
pub async fn hook(data_dir: &std::path::Path, repo: &str) -> anyhow::Result<()> {
    let read = |f: &str| {
        std::fs::read_to_string(data_dir.join(f))
            .map(|s| s.trim().to_string())
            .with_context(|| format!("cannot read {}", data_dir.join(f).display()))
    };
    // A TLS server listens in plaintext on loopback for local tools.
    let url = format!("http://{}", read("local-address").or_else(|_| read("address"))?);
    let client = viaduct_sdk::Client::connect(&url, Some(read("admin-token")?)).await?;
    let resp = client
        .repos()
        .sync(viaduct_proto::v1::SyncRepoRequest {
            name: repo.to_string(),
            // Set by the server for a push over HTTP (see `smart_http`).
            pusher: std::env::var("VIADUCT_PUSHER").unwrap_or_default(),
        })
        .await
        .map_err(viaduct_sdk::Error::from)?
        .into_inner();
    for id in &resp.run_ids {
        println!("viaduct: started run {id} ({url}, `viaduct logs {id} --follow`)");
    }
    Ok(())
}
