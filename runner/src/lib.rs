//! The Viaduct runner: registers with a server, keeps one Connect stream
//! open (reconnecting with backoff), and runs the jobs pushed to it.
//!
//! - [`session`]: one Connect stream (Hello, Welcome/resume, heartbeats,
//!   assignments, cancels, acks);
//! - [`job`]: one job attempt's steps, conditions, timeouts, reports;
//! - [`executor`]: how a `run:` step runs (host process group, container,
//!   dummy);
//! - [`plugin_host`]: how a `uses:` step runs (WASI components in wasmtime);
//! - [`files`]: artifacts and caches between workspaces and the server;
//! - [`environment`]: what the runner adds to its jobs' environment;
//! - [`report`]: where a job's states and logs go (the trait);
//! - [`outbox`]: reliable, resumable delivery of logs and updates;
//! - [`identity`]: the registered runner id and token on disk;
//! - [`outputs`]: the `$VIADUCT_OUTPUT` file format;
//! - [`toolchains`]: the toolchains host jobs can run, as labels;
//! - [`space`]: the work dir's free space (the runner pauses when short).

pub mod debug;
pub mod environment;
pub mod executor;
pub mod files;
pub mod held;
pub mod identity;
pub mod install;
pub mod job;
pub mod local;
pub mod mask;
pub mod outbox;
pub mod outputs;
pub mod plugin_host;
pub mod report;
pub mod session;
pub mod snapshot;
pub mod source;
pub mod space;
pub mod toolchains;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;

use viaduct_proto::v1::Executor;

use crate::{executor::Backend, identity::Identity, session::SessionEnd};

/// How to run the runner.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server URL (https://host:port, or http:// to this machine); several,
    /// comma-separated, for replicas of one server.
    pub server: String,
    /// How to reach it: trusted CA, plaintext allowed, client certificate.
    pub transport: viaduct_sdk::Transport,
    /// Registration token (needed only when not yet registered).
    pub registration_token: Option<String>,
    /// Name shown to admins.
    pub name: String,
    /// Labels jobs can ask for with `runs_on`.
    pub labels: Vec<String>,
    /// Where job workspaces and the identity file live.
    pub work_dir: PathBuf,
    /// Jobs run at once.
    pub slots: u32,
    /// SIGTERM → SIGKILL grace when stopping a step.
    pub kill_grace: Duration,
    /// Keep job directories after jobs (debugging).
    pub keep_workspaces: bool,
    /// Use the dummy executor (benchmarks, protocol tests).
    pub dummy: bool,
    /// Take one job, report it, then exit (registering anew each start).
    pub ephemeral: bool,
    /// Clone repositories with git2 instead of fetching archives from the
    /// server.
    pub clone_sources: bool,
    /// Refuse jobs without an image (shared runners: containers only).
    pub no_host_jobs: bool,
    /// Take only jobs of trusted runs (see `RegisterRequest.protected`).
    pub protected: bool,
    /// Host jobs run as per-slot users from this uid (when root); `None`:
    /// as the runner's own user.
    pub job_user_base: Option<u32>,
    /// Supplementary groups of the slot users (e.g. `nix-users` for the
    /// Nix daemon).
    pub job_groups: Vec<String>,
    /// The container engine; `None` = do not look for one.
    pub containers: Option<executor::container::ContainerConfig>,
    /// WASI plugin settings.
    pub plugins: plugin_host::PluginConfig,
    /// What the runner adds to its jobs' environment.
    pub env: environment::RunnerEnv,
    /// Below this many free bytes in the work dir's filesystem the runner
    /// takes no new jobs (0: never pauses).
    pub min_free_disk: u64,
}

impl Config {
    /// The servers `server` names, in order (replicas: several).
    pub fn servers(&self) -> Vec<String> {
        self.server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }
}

/// Runs until `shutdown` resolves or the server rejects the runner.
pub async fn run(mut cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.work_dir).with_context(|| format!("cannot create {}", cfg.work_dir.display()))?;
    // Absolute: container engines read a relative bind source as a volume
    // name, and job processes run elsewhere.
    cfg.work_dir =
        std::fs::canonicalize(&cfg.work_dir).with_context(|| format!("cannot resolve {}", cfg.work_dir.display()))?;
    // A URL or TLS setting that cannot work is an error now, not a retry loop.
    let servers = cfg.servers();
    anyhow::ensure!(!servers.is_empty(), "--server names no URL");
    for server in &servers {
        viaduct_sdk::Client::lazy_with(server, None, &cfg.transport)?;
    }
    if cfg.ephemeral {
        // One job needs one slot.
        cfg.slots = 1;
    }
    let stored = if cfg.ephemeral { None } else { Identity::load(&cfg.work_dir, &cfg.server) };
    let identity = match stored {
        Some(id) => id,
        None => {
            let token = cfg.registration_token.as_deref().context(
                "this runner is not registered with the server yet: pass the registration token with --token",
            )?;
            register_with_retry(&cfg, token).await?
        }
    };
    let backend = backends(&cfg, &identity.runner_id, executor::host::LEFTOVERS_AFTER).await;
    anyhow::ensure!(
        !backend.executors().is_empty(),
        "this runner can run nothing: --no-host-jobs and no container engine"
    );
    let client = viaduct_sdk::Client::lazy_any(&servers, Some(&identity.token), &cfg.transport)?;
    let sources =
        source::Sources::new(client.clone(), identity.token.clone(), cfg.clone_sources, cfg.work_dir.join("tmp"));
    let files = Arc::new(files::Files::new(client.clone()));
    let plugins = if cfg.dummy {
        None
    } else {
        match plugin_host::PluginHost::new(
            cfg.work_dir.join("plugins"),
            client,
            Arc::clone(&files),
            cfg.plugins.clone(),
        ) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "no plugin host: plugin steps will fail on this runner");
                None
            }
        }
    };
    // Probed while connecting (a Toolchains message follows the Hello).
    let (toolchains, _) = tokio::sync::watch::channel(Vec::new());
    let paused = space::judge("", space::free(&cfg.work_dir), cfg.min_free_disk).unwrap_or_default();
    let (paused, _) = tokio::sync::watch::channel(paused);
    let outbox = Arc::new(outbox::Outbox::default());
    let services = job::Services {
        reports: Arc::clone(&outbox) as Arc<dyn report::Reports>,
        backend,
        sources: Arc::new(sources),
        files,
        plugins,
        runner_name: cfg.name.clone(),
        env: Arc::new(cfg.env.clone()),
        // Held only where a later job runs as another user.
        held: Arc::new(held::Held::new(if cfg.job_user_base.is_some() && nix::unistd::geteuid().is_root() {
            cfg.slots.max(1) as usize
        } else {
            0
        })),
    };
    let shared = Arc::new(session::Shared {
        services,
        outbox,
        jobs: Mutex::default(),
        labels: cfg.labels.clone(),
        slots: cfg.slots.max(1),
        protected: cfg.protected,
        transport: cfg.transport.clone(),
        finished: std::sync::atomic::AtomicUsize::new(0),
        ephemeral: cfg.ephemeral,
        instance: {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            hex::encode(r)
        },
        toolchains,
        paused,
    });
    let disk = {
        let (shared, cfg) = (Arc::clone(&shared), cfg.clone());
        async move { space::watch(&cfg.work_dir, cfg.min_free_disk, &shared.paused).await }
    };
    let rescan = {
        let (shared, cfg) = (Arc::clone(&shared), cfg.clone());
        async move {
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
            let mut hangup = hangup.map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler")).ok();
            loop {
                let found = probe_toolchains(&cfg).await;
                shared.toolchains.send_if_modified(|old| std::mem::replace(old, found) != *old);
                let Some(h) = hangup.as_mut() else { return std::future::pending().await };
                if h.recv().await.is_none() {
                    return std::future::pending().await;
                }
                tracing::info!("SIGHUP: probing toolchains again");
            }
        }
    };
    let work = async {
        let mut backoff = Backoff::default();
        // Replicas: a broken stream is tried again on the next server.
        let mut turn = 0;
        loop {
            let started = std::time::Instant::now();
            let server = &servers[turn % servers.len()];
            match session::run(&shared, server, &identity).await {
                Ok(()) => {}
                // The server removes an ephemeral runner once its job is
                // reported: a reconnect after that is refused, and it is done
                // — once the job's teardown, which follows the report, is.
                Err(SessionEnd::Rejected(_)) if cfg.ephemeral && shared.running() > 0 => {
                    while shared.running() > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if shared.finished.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                        return Ok(());
                    }
                }
                Err(SessionEnd::Rejected(_))
                    if cfg.ephemeral && shared.finished.load(std::sync::atomic::Ordering::SeqCst) > 0 =>
                {
                    return Ok(());
                }
                Err(SessionEnd::Idle) => {
                    tracing::info!(
                        "ephemeral runner: the server has no job for it (it ran elsewhere or was cancelled); exiting"
                    );
                    return Ok(());
                }
                Err(SessionEnd::Rejected(why)) => {
                    return Err(anyhow::anyhow!(
                        "the server rejected this runner ({why}); it may have been removed. Delete {} to register again",
                        cfg.work_dir.join("runner.json").display()
                    ));
                }
                Err(SessionEnd::Broken(why)) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Backoff::default();
                    }
                    let wait = backoff.next();
                    turn += 1;
                    tracing::warn!(error = %why, server, retry_in_ms = wait.as_millis() as u64, running = shared.running(), "connection to the server lost");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    };
    // An ephemeral runner is done once its one job is reported and every
    // report of it acknowledged.
    let spent = async {
        if !cfg.ephemeral {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if shared.finished.load(std::sync::atomic::Ordering::SeqCst) > 0 && shared.outbox.active().is_empty() {
                return;
            }
        }
    };
    tokio::select! {
        r = work => r,
        () = rescan => Ok(()),
        () = disk => Ok(()),
        () = spent => {
            tracing::info!("ephemeral runner: its job is done and reported; exiting");
            Ok(())
        }
        () = shutdown => {
            tracing::info!(running = shared.running(), "shutting down: stopping running jobs");
            shared.abandon_all();
            shared.services.held.release_all().await;
            let deadline = tokio::time::Instant::now() + cfg.kill_grace + Duration::from_secs(2);
            while shared.running() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }
    }
}

async fn register_with_retry(cfg: &Config, token: &str) -> anyhow::Result<Identity> {
    let mut backoff = Backoff::default();
    let servers = cfg.servers();
    let mut turn = 0;
    loop {
        let server = &servers[turn % servers.len()];
        turn += 1;
        let asked = identity::Asked {
            name: cfg.name.clone(),
            labels: cfg.labels.clone(),
            protected: cfg.protected,
            slots: cfg.slots.max(1),
            executors: intended_executors(cfg),
            ephemeral: cfg.ephemeral,
        };
        match Identity::register(&cfg.work_dir, (server, &cfg.server), &cfg.transport, token, &asked).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                let permanent = e.downcast_ref::<viaduct_sdk::Error>().is_some_and(
                    |e| matches!(e, viaduct_sdk::Error::Status(s) if s.code() != tonic::Code::Unavailable),
                );
                if permanent {
                    return Err(e.context("registration failed"));
                }
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach the server to register");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The toolchains host jobs of this runner can run (none without host
/// jobs): probed as the jobs' user, with their environment.
async fn probe_toolchains(cfg: &Config) -> Vec<String> {
    if cfg.dummy || cfg.no_host_jobs {
        return Vec::new();
    }
    // In the work dir (0711 when jobs run as slot users: passable).
    let home = cfg.work_dir.join("toolchains-home");
    let _ = std::fs::remove_dir_all(&home);
    if let Err(e) = std::fs::create_dir_all(&home) {
        tracing::warn!(error = %e, "cannot make a directory to probe toolchains in: none advertised");
        return Vec::new();
    }
    let uid = cfg.job_user_base.filter(|_| nix::unistd::geteuid().is_root());
    if let Some(uid) = uid {
        executor::isolation::give(uid, &home);
    }
    // Where a job of that uid could see the probes: with their own private
    // /proc, as jobs have (none where it cannot be made: neither do jobs).
    let mounts = uid.and_then(|_| {
        use executor::isolation::StepMounts;
        StepMounts::works().and_then(|()| StepMounts::new()).ok()
    });
    let found = toolchains::Prober { env: &cfg.env, uid, home: &home, mounts: mounts.as_ref() }.probe().await;
    let _ = std::fs::remove_dir_all(&home);
    tracing::info!(toolchains = ?found, "toolchains found");
    found
}

/// What this runner's configuration may offer (registered and pinned; a
/// container engine that does not answer later just offers less).
fn intended_executors(cfg: &Config) -> Vec<Executor> {
    if cfg.dummy {
        return vec![Executor::Host, Executor::Container];
    }
    let mut out = Vec::new();
    if !cfg.no_host_jobs {
        out.push(Executor::Host);
    }
    if cfg.containers.is_some() {
        out.push(Executor::Container);
    }
    out.push(Executor::Wasi);
    out
}

/// The executors of this runner: the dummy one (benchmarks), or the host
/// executor (unless `--no-host-jobs`) and the container executor (when an
/// engine answers; what a previous process left is cleaned up first).
/// `leftovers_after`: see [`executor::host::HostBackend::leftovers_after`].
pub(crate) async fn backends(cfg: &Config, runner_id: &str, leftovers_after: Duration) -> Arc<dyn Backend> {
    if cfg.dummy {
        return Arc::new(executor::dummy::DummyBackend);
    }
    let host: Option<Arc<dyn Backend>> = (!cfg.no_host_jobs).then(|| {
        let cgroups = executor::cgroup::Cgroups::detect(runner_id);
        let users = cfg
            .job_user_base
            .and_then(|base| executor::isolation::SlotUsers::new(base, cfg.slots, &cfg.job_groups, &cfg.work_dir));
        let host = executor::host::HostBackend::new(&cfg.work_dir, cfg.kill_grace, cfg.keep_workspaces, cgroups, users)
            .leftovers_after(leftovers_after);
        host.clean_stale();
        Arc::new(host) as Arc<dyn Backend>
    });
    let mut container: Option<Arc<dyn Backend>> = None;
    if let Some(c) = &cfg.containers {
        match executor::container::ContainerBackend::connect(&cfg.work_dir, runner_id, c.clone()).await {
            Ok(b) => {
                tracing::info!(engine = %b.engine, "container executor ready");
                b.clean_stale().await;
                container = Some(Arc::new(b));
            }
            Err(e) => tracing::warn!(error = %e, "no container executor: jobs with an image will go to other runners"),
        }
    }
    Arc::new(executor::Router { host, container })
}

/// This machine's host name (empty if unknown).
pub fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Exponential backoff from 100 ms to 10 s, with jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        // Up to 25% jitter, from the clock's low bits (no RNG needed).
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}
