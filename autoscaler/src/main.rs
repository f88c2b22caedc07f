//! `viaduct-autoscaler`: one ephemeral runner per waiting job.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use viaduct_autoscaler::{
    identity::Identity,
    provision::{
        Provisioner,
        container::Containers,
        kubernetes::{JobSettings, Jobs},
        process::Processes,
    },
    scaler::{Scaler, ScalerConfig},
};
use viaduct_proto::{EXECUTOR_WORDS, ExecutorWord, v1::Executor};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// `viaduct-runner` processes on this machine.
    Process,
    /// `viaduct-runner` in containers (Docker Engine API: Docker or Podman).
    Container,
    /// `viaduct-runner` in Kubernetes Jobs, one pod each.
    Kubernetes,
}

/// Starts one ephemeral runner for each job waiting on the server, bound
/// to that job, and cleans up after them.
#[derive(Parser, Debug)]
#[command(name = "viaduct-autoscaler", version)]
struct Args {
    /// The server's URL.
    #[arg(long, env = "VIADUCT_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// A file holding an admin token (it makes registration tokens); or
    /// set VIADUCT_TOKEN.
    #[arg(long, env = "VIADUCT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Trust this CA (PEM) besides the system's roots.
    #[arg(long, env = "VIADUCT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow http:// to another machine.
    #[arg(long)]
    insecure: bool,
    /// How runners are started.
    #[arg(long, value_enum, default_value = "process")]
    provisioner: Kind,
    /// The URL runners connect to (default: --server).
    #[arg(long)]
    runner_server: Option<String>,
    /// The runner binary (process provisioner; default: `viaduct-runner`
    /// beside this program, else on PATH).
    #[arg(long)]
    runner_bin: Option<PathBuf>,
    /// Process provisioner, as root: the job user of the runner in seat N
    /// is this uid + N (apart from a standalone runner's 61000…).
    #[arg(long, default_value_t = 62000)]
    job_user_base: u32,
    /// The image runners run in (container and kubernetes provisioners); it
    /// must have `viaduct-runner` on its PATH.
    #[arg(long, required_if_eq_any([("provisioner", "container"), ("provisioner", "kubernetes")]))]
    image: Option<String>,
    /// The container engine's Unix socket.
    #[arg(long, default_value = "/run/podman/podman.sock")]
    container_socket: String,
    /// The runner containers' network (`host`, `bridge`, a network name).
    #[arg(long, default_value = "bridge")]
    container_network: String,
    /// The namespace runner Jobs (and their token Secrets) are made in
    /// (kubernetes provisioner).
    #[arg(long, default_value = "default")]
    kube_namespace: String,
    /// A kubeconfig file (its current context) for the cluster (default:
    /// KUBECONFIG, ~/.kube/config, or the pod's service account in-cluster).
    #[arg(long)]
    kube_config: Option<PathBuf>,
    /// The service account runner pods run as (default: the namespace's
    /// `default`); its token is never mounted in them.
    #[arg(long)]
    kube_service_account: Option<String>,
    /// CPU of each runner pod, request and limit (`2`, `500m`).
    #[arg(long)]
    kube_cpu: Option<String>,
    /// Memory of each runner pod, request and limit (`4Gi`).
    #[arg(long)]
    kube_memory: Option<String>,
    /// Labels of the runners it starts; jobs asking for others are not its.
    #[arg(long, value_delimiter = ',', default_value = "linux")]
    labels: Vec<String>,
    /// Executors its runners offer (host, container, wasi).
    #[arg(long, value_delimiter = ',', default_value = "host,wasi")]
    executors: Vec<String>,
    /// Its runners take only trusted runs (never a fork's pull request).
    #[arg(long)]
    protected: bool,
    /// One more argument for every runner (repeat it).
    #[arg(long = "runner-arg", allow_hyphen_values = true)]
    runner_args: Vec<String>,
    /// Most runners alive at once.
    #[arg(long, default_value_t = 10)]
    max_runners: usize,
    /// A runner that has not connected by then is stopped (and its job
    /// tried again, at most 3 times).
    #[arg(long, default_value = "2m", value_parser = viaduct_pipeline::duration::parse_duration)]
    connect_timeout: Duration,
    /// A runner alive this long is stopped.
    #[arg(long, default_value = "6h", value_parser = viaduct_pipeline::duration::parse_duration)]
    max_lifetime: Duration,
    /// Time between looks at the queue.
    #[arg(long, default_value = "1s", value_parser = viaduct_pipeline::duration::parse_duration)]
    interval: Duration,
    /// Where instances keep their token, work dir and log, and where this
    /// autoscaler keeps its id: restarted on the same directory, it finds
    /// and cleans up what it started before (one autoscaler per directory).
    #[arg(long, default_value = "viaduct-autoscaler")]
    state_dir: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal (not a log file, not the
        // journal), and never under `NO_COLOR`.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viaduct-autoscaler: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viaduct-autoscaler: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
            .trim()
            .to_string(),
        None => std::env::var("VIADUCT_TOKEN")
            .map_err(|_| anyhow::anyhow!("no token: give --token-file (an admin token) or VIADUCT_TOKEN"))?,
    };
    let executors = args
        .executors
        .iter()
        .map(|w| {
            Executor::from_word(w).ok_or_else(|| anyhow::anyhow!("unknown executor `{w}` (known: {EXECUTOR_WORDS})"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(args.max_runners > 0, "--max-runners must be at least 1");
    // Its identity first: a second autoscaler on this directory stops here.
    let identity = Identity::open(&args.state_dir)?;
    let transport = viaduct_sdk::Transport::from_files(args.ca_cert.as_deref(), args.insecure, None, None)?;
    let client = viaduct_sdk::Client::connect_with(&args.server, Some(token), &transport).await?;
    let provisioner: Box<dyn Provisioner> = match args.provisioner {
        Kind::Process => {
            let runner = args.runner_bin.clone().unwrap_or_else(|| {
                let beside = std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("viaduct-runner")));
                beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("viaduct-runner"))
            });
            if !nix::unistd::geteuid().is_root() {
                tracing::warn!(
                    "not root: the runners' host jobs run as this user and can read what it can (the other \
                     instances' tokens, this program's token file): run as root, or use --provisioner container"
                );
            }
            Box::new(Processes { runner, job_user_base: args.job_user_base })
        }
        Kind::Container => {
            let image = args.image.clone().unwrap_or_default();
            Box::new(Containers::connect(&args.container_socket, image, args.container_network.clone()).await?)
        }
        Kind::Kubernetes => {
            let settings = JobSettings {
                namespace: args.kube_namespace.clone(),
                image: args.image.clone().unwrap_or_default(),
                service_account: args.kube_service_account.clone(),
                cpu: args.kube_cpu.clone(),
                memory: args.kube_memory.clone(),
                max_lifetime: Some(args.max_lifetime),
            };
            Box::new(Jobs::connect(args.kube_config.as_deref(), settings).await?)
        }
    };
    let cfg = ScalerConfig {
        runner_server: args.runner_server.clone().unwrap_or_else(|| args.server.clone()),
        labels: args.labels.clone(),
        executors,
        protected: args.protected,
        runner_args: args.runner_args.clone(),
        max_runners: args.max_runners,
        connect_timeout: args.connect_timeout,
        max_lifetime: args.max_lifetime,
        state_dir: std::fs::canonicalize(identity.dir())?,
        id: identity.id().to_string(),
    };
    let mut scaler = Scaler::new(client, cfg, provisioner);
    tracing::info!(server = %args.server, id = identity.id(), what = %scaler.describe(), "autoscaler started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        match scaler.pass().await {
            Ok(p) if !p.started.is_empty() || !p.ended.is_empty() || !p.adopted.is_empty() => {
                tracing::debug!(started = ?p.started, ended = ?p.ended, adopted = ?p.adopted, alive = p.alive, "pass");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pass failed"),
        }
    }
    tracing::info!("stopping: instances are stopped and their tokens revoked");
    scaler.stop_all().await;
    drop(identity);
    Ok(())
}
