//! `viaduct-runner`: runs jobs for a Viaduct server.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use viaduct_runner::Config;

/// A Viaduct runner: takes jobs from a server and runs their steps.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run a pipeline file on this machine, without a server: the same job
    /// runner and executors as a connected runner, logs to the terminal,
    /// the run's result as the exit code.
    Exec(Box<viaduct_runner::local::ExecArgs>),
    /// Install this runner as a systemd service (writes the unit, enables
    /// and starts it).
    Install(viaduct_runner::install::InstallArgs),
}

/// Taking jobs from a server (no subcommand).
#[derive(Debug, clap::Args)]
struct Args {
    /// Server URL: https://host:port (http:// only to this machine, unless
    /// --insecure). Replicas of one server: several, comma-separated (a
    /// lost connection is tried again on the next).
    #[arg(long, env = "VIADUCT_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// Trust this CA (PEM) besides the system's roots.
    #[arg(long, env = "VIADUCT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow http:// to another machine (the runner token, secrets and
    /// sources then cross the network in plaintext).
    #[arg(long)]
    insecure: bool,
    /// Client certificate (PEM) for servers that require mutual TLS.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Not accepted: a command line is readable by every user of the
    /// machine (`/proc/*/cmdline`). Use --token-file or
    /// VIADUCT_RUNNER_TOKEN.
    #[arg(long, hide = true)]
    token: Option<String>,
    /// File holding the registration token (from the server's runner-token
    /// file or `Runners.CreateRegistrationToken`); needed only on first
    /// start. The VIADUCT_RUNNER_TOKEN variable works too.
    #[arg(long, env = "VIADUCT_RUNNER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Name shown to admins (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Comma-separated labels jobs select with `runs_on`.
    #[arg(long, value_delimiter = ',', default_value = "linux")]
    labels: Vec<String>,
    /// Directory for job workspaces and the runner's identity.
    #[arg(long, env = "VIADUCT_WORK_DIR", default_value = "viaduct-runner")]
    work_dir: PathBuf,
    /// Jobs to run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Time between SIGTERM and SIGKILL when stopping a step.
    #[arg(long, default_value = "5s", value_parser = viaduct_pipeline::duration::parse_duration)]
    kill_grace: Duration,
    /// Keep job directories after jobs end (for debugging).
    #[arg(long)]
    keep_workspaces: bool,
    /// Run steps with the dummy executor (no processes; for benchmarks).
    #[arg(long, hide = true)]
    dummy_executor: bool,
    /// Take exactly one job, report it, then exit (a fresh machine or
    /// container per job). Registers anew at each start (so it needs the
    /// registration token) and keeps no identity: the server removes it
    /// once its job is reported.
    #[arg(long)]
    ephemeral: bool,
    /// Clone repositories with git2 (upstream URL of mirrors; the server's
    /// git HTTP endpoint for hosted repositories) instead of fetching source
    /// archives from the server.
    #[arg(long)]
    clone_sources: bool,
    /// Unix socket of the Docker Engine API (Docker or `podman system
    /// service`). Default: $DOCKER_HOST, /var/run/docker.sock, then
    /// Podman's sockets.
    #[arg(long)]
    container_socket: Option<String>,
    /// Do not look for a container engine.
    #[arg(long, conflicts_with = "container_socket")]
    no_containers: bool,
    /// Run only jobs with an image (shared runners: no host access).
    #[arg(long)]
    no_host_jobs: bool,
    /// When run as root, host jobs run as per-slot users with uids (and
    /// gids) from this one up, each seeing only its own processes.
    #[arg(long, default_value_t = 61000)]
    job_user_base: u32,
    /// Groups the per-slot users belong to, comma-separated (e.g.
    /// `nix-users`, for the Nix daemon).
    #[arg(long, value_delimiter = ',')]
    job_groups: Vec<String>,
    /// Run host jobs as the runner's own user even as root (they can then
    /// read the runner's files: for trusted work on a dedicated machine).
    #[arg(long)]
    shared_job_user: bool,
    /// Take only jobs of trusted runs: never a pull request from a fork or
    /// from a sender the repository does not trust (machines that hold
    /// deploy keys or reach production).
    #[arg(long)]
    protected: bool,
    /// CPU limit of job containers that set none (0 = none).
    #[arg(long, default_value_t = 0.0)]
    container_cpus: f64,
    /// Memory limit of job containers that set none, e.g. 4g (0 = none).
    #[arg(long, default_value = "0", value_parser = memory)]
    container_memory: u64,
    /// Memory cap of a plugin whose manifest sets none.
    #[arg(long, default_value = "256m", value_parser = memory)]
    plugin_memory: u64,
    /// Largest memory cap a plugin manifest may ask for.
    #[arg(long, default_value = "2g", value_parser = memory)]
    plugin_max_memory: u64,
    /// A host directory plugins may be given by name (manifest `mounts`),
    /// as NAME=DIR; repeatable. Default: deploy=WORK_DIR/deploy.
    #[arg(long = "plugin-mount", value_parser = mount)]
    plugin_mounts: Vec<(String, PathBuf)>,
    /// A variable every job gets, as KEY=VALUE; repeatable. Jobs start from
    /// an empty environment; pipeline, job and step `env` and secrets come
    /// over it. Not for secrets: a command line is readable by every user
    /// of the machine (use server secrets, or a 0600 --env-file).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A file of KEY=VALUE lines every job gets (`#` comments); repeatable,
    /// under --env.
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Variables of the runner's own environment host jobs get, by name,
    /// comma-separated: e.g. PATH,RUSTUP_HOME,CARGO_HOME for a toolchain
    /// installed the usual way. Under --env-file and --env.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    inherit_env: Vec<String>,
    /// Below this much free space on the work dir's filesystem (e.g. 1g)
    /// the runner takes no new jobs — it tells the server why — until
    /// space returns; running jobs go on (0: never).
    #[arg(long, default_value = "1g", value_parser = memory)]
    min_free_disk: u64,
    /// Export traces (one span per job and per step, under their run's
    /// trace) to this OpenTelemetry collector over OTLP/gRPC, e.g.
    /// http://127.0.0.1:4317. Off when unset.
    #[arg(long, env = "VIADUCT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn mount(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=DIR"))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err(format!("`{name}` is not a mount name (letters, digits, - and _)"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

fn memory(s: &str) -> Result<u64, String> {
    if s == "0" { Ok(0) } else { viaduct_pipeline::duration::parse_memory(s) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A local run's terminal is the run's: only warnings of the runner's own.
    let quiet = matches!(cli.command, Some(Command::Exec(_)));
    let otlp = if cli.command.is_none() { cli.run.otlp_endpoint.as_deref() } else { None };
    let filter = if quiet { "warn" } else { "info,h2=warn,tower=warn" };
    let _logging = match viaduct_telemetry::init("viaduct-runner", filter, otlp, &["job", "step"]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("viaduct-runner: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Exec(args)) => return viaduct_runner::local::main(*args),
        Some(Command::Install(args)) => return viaduct_runner::install::main(args),
        None => {}
    }
    let args = cli.run;
    if args.token.is_some() {
        eprintln!(
            "viaduct-runner: --token is not accepted: every user of this machine can read a command line \
             (/proc/*/cmdline). Put the token in a file only this user can read and pass --token-file FILE, or set \
             VIADUCT_RUNNER_TOKEN"
        );
        return ExitCode::from(2);
    }
    let token = match (&args.token_file, std::env::var("VIADUCT_RUNNER_TOKEN")) {
        (Some(f), _) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("viaduct-runner: cannot read {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        (None, Ok(t)) => Some(t.trim().to_string()),
        (None, Err(_)) => None,
    };
    // The runner's own variables are not passed on to jobs (they start from
    // an empty environment), and not to other processes it starts either.
    // SAFETY: single-threaded here, before the runtime starts.
    unsafe { std::env::remove_var("VIADUCT_RUNNER_TOKEN") };
    let env = match viaduct_runner::environment::RunnerEnv::build(&args.env, &args.env_files, &args.inherit_env, |n| {
        std::env::var(n).ok()
    }) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("viaduct-runner: {e}");
            return ExitCode::from(2);
        }
    };
    let name = args.name.unwrap_or_else(viaduct_runner::hostname);
    let mut mounts: std::collections::HashMap<String, PathBuf> = args.plugin_mounts.into_iter().collect();
    mounts.entry("deploy".into()).or_insert_with(|| args.work_dir.join("deploy"));
    let mb = |bytes: u64| u32::try_from(bytes >> 20).unwrap_or(u32::MAX).max(1);
    let transport = match viaduct_sdk::Transport::from_files(
        args.ca_cert.as_deref(),
        args.insecure,
        args.client_cert.as_deref(),
        args.client_key.as_deref(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("viaduct-runner: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = Config {
        server: args.server,
        transport,
        registration_token: token,
        name,
        labels: args.labels.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect(),
        work_dir: args.work_dir,
        slots: args.slots,
        kill_grace: args.kill_grace,
        keep_workspaces: args.keep_workspaces,
        dummy: args.dummy_executor,
        ephemeral: args.ephemeral,
        clone_sources: args.clone_sources,
        no_host_jobs: args.no_host_jobs,
        protected: args.protected,
        job_user_base: (!args.shared_job_user).then_some(args.job_user_base),
        job_groups: args.job_groups,
        containers: (!args.no_containers).then_some(viaduct_runner::executor::container::ContainerConfig {
            socket: args.container_socket,
            cpus: args.container_cpus,
            memory: args.container_memory,
            kill_grace: args.kill_grace,
            keep: args.keep_workspaces,
        }),
        plugins: viaduct_runner::plugin_host::PluginConfig {
            default_memory_mb: mb(args.plugin_memory),
            max_memory_mb: mb(args.plugin_max_memory),
            mounts,
        },
        env,
        min_free_disk: args.min_free_disk,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viaduct-runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker, not on this thread: what wakes it (a socket's
    // readiness, a task it waits for) and what it spawns then stay on the
    // workers, without a hop through this thread each time.
    match runtime.block_on(async { tokio::spawn(viaduct_runner::run(cfg, shutdown_signal())).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("viaduct-runner: {e:#}");
            ExitCode::FAILURE
        }
        // It panicked: as if it had here.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            eprintln!("viaduct-runner: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
