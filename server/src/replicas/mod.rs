//! Server replicas on one PostgreSQL database (`--replica`).
//!
//! Exactly one replica leads: it runs the engine (queue, leases, dispatch,
//! schedules, retention) and serves everything itself. The others follow:
//! they forward every request — API calls, gRPC-web, runner streams,
//! webhooks, git, artifacts, the UI — to the leader ([`forward`]), so a
//! client or a runner may use any replica. Leadership is a lease row in the
//! database (`store::postgres::spawn_lease`): a follower takes it once it
//! has expired (the leader died or was cut off), raising its fencing epoch,
//! and the new leader's store checks that epoch in every write transaction
//! — a leader that was paused and comes back can commit nothing. A follower
//! that takes the lead stops forwarding and starts the engine on the same
//! address; what was in flight through it breaks, and clients and runners
//! reconnect (runners resume their jobs and logs from acknowledged offsets,
//! watchers from their cursors).
//!
//! Replicas share the database and a secret key (`--secret-key-file`);
//! each has its own data directory. Hosted repositories live in the
//! leader's data directory (see docs/scaling.md).

pub mod client_ip;
pub mod forward;

use std::{future::Future, sync::Arc};

use anyhow::Context;

use crate::{
    Config, StoreConfig,
    store::{Leadership, spawn_lease},
};

/// Replica settings.
#[derive(Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// The URL the other replicas reach this one at (default:
    /// `http(s)://<bound address>`).
    pub advertise_url: Option<String>,
    /// A CA the replicas' certificates are signed by (with TLS), trusted
    /// besides the system's roots by a follower forwarding to the leader.
    pub ca_file: Option<std::path::PathBuf>,
}

/// This replica's id in the lease: host, process, and a random part.
fn holder() -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("{host}/{}/{}", std::process::id(), hex::encode(r)))
}

/// Runs a replica until `shutdown`: follows (forwarding to the leader)
/// until it takes the lead, then serves as the leader.
pub async fn run(mut cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let StoreConfig::Postgres { url, password, ca_file } = cfg.store.clone() else {
        anyhow::bail!("--replica needs a PostgreSQL --store: replicas share one database");
    };
    anyhow::ensure!(
        cfg.tls.as_ref().is_none_or(|t| t.client_ca.is_none()),
        "--replica with --tls-client-ca is not supported: a runner's certificate ends at the replica it connects to \
         and cannot be shown to the leader (use registration tokens)"
    );
    anyhow::ensure!(
        cfg.secret_key_file.is_some(),
        "--replica needs --secret-key-file: every replica must open the secrets, grants and links the others sealed"
    );
    if matches!(cfg.blobs, crate::blobs::BlobConfig::Local) {
        tracing::warn!(
            "blobs (caches, artifacts, plugins) are on this replica's disk: another leader will not have them; \
             use --blob-store s3://… (finished logs stay in the database until then)"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let advertise = match cfg.replica.as_ref().and_then(|r| r.advertise_url.clone()) {
        Some(url) => url,
        None => {
            anyhow::ensure!(
                !addr.ip().is_unspecified(),
                "--replica listening on {addr} needs --advertise-url: the address the other replicas reach this one at"
            );
            let scheme = if cfg.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{addr}")
        }
    };
    // The follower's side of TLS: its listener speaks it as the leader's
    // does, and it verifies the leader it forwards to.
    let tls = cfg.tls.clone().map(crate::tls::Tls::new).transpose()?.map(Arc::new);
    if let Some(t) = &tls {
        t.spawn_reloader();
    }
    let replica_ca = cfg.replica.as_ref().and_then(|r| r.ca_file.clone());
    let client_tls = crate::tls::client_config(replica_ca.as_deref(), "--replica-ca-file", true)
        .map_err(|e| anyhow::anyhow!("TLS to the leading replica: {e}"))?;
    let me = holder()?;
    let mut role = spawn_lease(&url, password.as_deref(), ca_file.as_deref(), me.clone(), advertise.clone())?;
    // Know who leads before announcing the address (a first look at the
    // lease takes a moment; an unreachable database, longer).
    let first_look = role.wait_for(|r| *r != Leadership::Unknown);
    if tokio::time::timeout(std::time::Duration::from_secs(10), first_look).await.is_err() {
        tracing::warn!("the database does not answer yet: serving, but forwarding nothing until it does");
    }
    crate::write_atomically(&cfg.data_dir, "address", &format!("{addr}\n"))?;
    tracing::info!(%addr, %advertise, replica = %me, "replica started: following until it leads");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let secret_box = match &cfg.secret_key_file {
        Some(file) => crate::secrets::SecretBox::open_file(file)?,
        None => crate::secrets::SecretBox::open(&cfg.data_dir)?,
    };
    let forwarder = Arc::new(forward::Forwarder::new(
        role.clone(),
        secret_box.derive_key(client_ip::KEY_CONTEXT),
        advertise.clone(),
        client_tls,
    ));
    let follower = tokio::spawn(forward::serve(listener, tls, forwarder, role.clone()));
    let fence = loop {
        let current = role.borrow_and_update().clone();
        match current {
            Leadership::Leader(fence) => break fence,
            Leadership::Follower { leader } => {
                tracing::info!(leader = leader.as_deref().unwrap_or("(none right now)"), "following")
            }
            Leadership::Unknown => {}
        }
        let mut stopping = stop.clone();
        tokio::select! {
            changed = role.changed() => changed.context("the lease thread ended")?,
            _ = stopping.wait_for(|s| *s) => {
                follower.abort();
                tracing::info!("replica stopped (it was following)");
                return Ok(());
            }
        }
    };
    // Leading: stop forwarding, serve everything here, on the same address.
    follower.abort();
    let _ = follower.await;
    tracing::info!(epoch = fence.epoch, "this replica leads: starting the engine");
    cfg.listen = addr;
    let mut stopping = stop.clone();
    crate::serve_engine(cfg, Some(fence), async move {
        let _ = stopping.wait_for(|s| *s).await;
    })
    .await
}
