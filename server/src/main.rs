//! `viaduct-server`: the Viaduct server binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use viaduct_server::{Config, engine::EngineConfig};

/// jemalloc returns what a burst of work freed (glibc's malloc keeps it in
/// per-thread arenas: 100,000 jobs submitted left 221 MiB resident, against
/// 102 MiB for the same queue after a restart).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background thread hands pages
/// freed a second ago back to the system, whether or not the server is
/// busy allocating (`_RJEM_MALLOC_CONF` in the environment still wins).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The Viaduct CI server: gRPC API, scheduler and log store on one port.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (gRPC, gRPC-web and HTTP). Port 0 picks a free
    /// port; the bound address is written to DATA_DIR/address.
    #[arg(long, env = "VIADUCT_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Directory for the database and token files (created if missing).
    #[arg(long, env = "VIADUCT_DATA_DIR", default_value = "viaduct-data")]
    data_dir: PathBuf,
    /// Where state lives: `sled` (DATA_DIR/db) or a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DB`, no password in it). TLS follows the
    /// URL's `sslmode`: `require` (TLS, the database's certificate
    /// verified and its name checked against HOST), `prefer` (the default:
    /// TLS, verified likewise, when the database offers it) or `disable`;
    /// none over a Unix socket.
    #[arg(long, env = "VIADUCT_STORE", default_value = "sled")]
    store: String,
    /// A file holding the PostgreSQL password (kept out of the process
    /// list and the logs).
    #[arg(long, env = "VIADUCT_STORE_PASSWORD_FILE")]
    store_password_file: Option<PathBuf>,
    /// A CA certificate (PEM) trusted for TLS to the PostgreSQL --store
    /// besides the system's roots (a private CA that signs the database's
    /// certificate).
    #[arg(long, env = "VIADUCT_STORE_CA_FILE")]
    store_ca_file: Option<PathBuf>,
    /// Run as one of several replicas on one PostgreSQL --store: one leads
    /// (runs the engine), the others forward to it and take over when it
    /// is gone.
    #[arg(long, env = "VIADUCT_REPLICA")]
    replica: bool,
    /// With --replica: the URL the other replicas reach this one at
    /// (default http(s)://<listen address>).
    #[arg(long, env = "VIADUCT_ADVERTISE_URL", requires = "replica")]
    advertise_url: Option<String>,
    /// With --replica and --tls-cert: a CA (PEM) the replicas'
    /// certificates are signed by, trusted besides the system's roots when
    /// a follower forwards to the leader.
    #[arg(long, env = "VIADUCT_REPLICA_CA_FILE", requires = "replica")]
    replica_ca_file: Option<PathBuf>,
    /// The secret key's file (default DATA_DIR/secret-key): replicas must
    /// share one (it seals secrets and signs grants and links).
    #[arg(long, env = "VIADUCT_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Where blobs (caches, artifacts, plugin components) live: `local`
    /// (DATA_DIR/blobs) or an S3-protocol bucket,
    /// `s3://BUCKET[/PREFIX]?endpoint=URL&region=R&access_key_id=ID`
    /// (no secret in it).
    #[arg(long, env = "VIADUCT_BLOB_STORE", default_value = "local")]
    blob_store: String,
    /// A file holding the object store's secret key (or set
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "VIADUCT_BLOB_STORE_SECRET_FILE")]
    blob_store_secret_file: Option<PathBuf>,
    /// A job's lease lapses when its runner is silent this long (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = viaduct_pipeline::duration::parse_duration)]
    lease_ttl: Duration,
    /// How often runners heartbeat.
    #[arg(long, default_value = "5s", value_parser = viaduct_pipeline::duration::parse_duration)]
    heartbeat_interval: Duration,
    /// A queued job gains one priority level per this much waiting.
    #[arg(long, default_value = "5m", value_parser = viaduct_pipeline::duration::parse_duration)]
    priority_aging: Duration,
    /// Bytes of the embedded store's page cache (sled), e.g. 64m: more
    /// keeps more of a large store in memory, less bounds the server's
    /// memory on a small machine.
    #[arg(long, default_value = "64m", value_parser = store_cache)]
    store_cache: u64,
    /// Export traces (one trace per run with its jobs' waits) to this OpenTelemetry collector over OTLP/gRPC, e.g.
    /// http://127.0.0.1:4317. Off when unset.
    #[arg(long, env = "VIADUCT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Most jobs running at once across all runners (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_running_jobs: usize,
    /// Most jobs of one pipeline running at once (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_running_per_pipeline: usize,
    /// Most log a step keeps (e.g. 128m): past it the runner ends the log
    /// with a marker line and drops the rest of the output; the step goes
    /// on.
    #[arg(long, default_value = "128m", value_parser = log_limit)]
    max_step_log: u64,
    /// Most log all steps of a job keep together (e.g. 512m): past it each
    /// later step's log is cut like one past --max-step-log; the steps go
    /// on.
    #[arg(long, default_value = "512m", value_parser = log_limit)]
    max_job_log: u64,
    /// Delay before the first automatic retry of a failed job; doubles per
    /// attempt.
    #[arg(long, default_value = "2s", value_parser = viaduct_pipeline::duration::parse_duration)]
    retry_backoff: Duration,
    /// URL clients and forges reach this server at, for clone and webhook
    /// URLs (default: http://<listen address>).
    #[arg(long, env = "VIADUCT_PUBLIC_URL")]
    public_url: Option<String>,
    /// A schedule slot missed while the server was down still fires if it
    /// is at most this old.
    #[arg(long, default_value = "1h", value_parser = viaduct_pipeline::duration::parse_duration)]
    schedule_catch_up: Duration,
    /// Publish the plugins in this directory at start (`NAME.wasm` with its
    /// `NAME.toml` manifest) instead of the first-party plugins a release
    /// build embeds: for development (`cargo xtask plugins` builds them
    /// into target/plugins).
    #[arg(long, env = "VIADUCT_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Serve the web UI bundle in this directory at `/` instead of the one
    /// a release build embeds: for development (`cargo xtask ui` builds it
    /// into target/ui; read at start).
    #[arg(long, env = "VIADUCT_UI_DIR")]
    ui_dir: Option<PathBuf>,
    /// Build caches may use this much disk before the least recently used
    /// are evicted (e.g. 10g).
    #[arg(long, default_value = "10g", value_parser = viaduct_pipeline::duration::parse_memory)]
    cache_max_size: u64,
    /// Total size of one repository's caches (or one pipeline's, for runs
    /// without a repository) before its own least recently used entries
    /// are evicted: no repository can evict the others' caches.
    #[arg(long, default_value = "4g", value_parser = viaduct_pipeline::duration::parse_memory)]
    cache_max_size_per_repo: u64,
    /// Largest single cache entry.
    #[arg(long, default_value = "4g", value_parser = viaduct_pipeline::duration::parse_memory)]
    cache_max_entry_size: u64,
    /// Cache entries not restored for this long expire.
    #[arg(long, default_value = "7d", value_parser = viaduct_pipeline::duration::parse_duration)]
    cache_ttl: Duration,
    /// Jobs whose pipeline does not say (`snapshots:`) keep a snapshot of
    /// their workspace after each step that succeeds, so a retry can
    /// resume from the failed step.
    #[arg(long)]
    snapshots: bool,
    /// A failed job of a run submitted or retried with keep_on_failure keeps
    /// its live environment (workspace, processes, container) on its runner
    /// this long, for a debug shell.
    #[arg(long, default_value = "30m", value_parser = viaduct_pipeline::duration::parse_duration)]
    hold_failed_workspace: Duration,
    /// Workspace snapshots are deleted this long after they were taken.
    #[arg(long, default_value = "7d", value_parser = viaduct_pipeline::duration::parse_duration)]
    snapshot_ttl: Duration,
    /// Snapshots are kept for this many of each pipeline's newest runs
    /// that have any.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    snapshot_keep_runs: u32,
    /// Most new content one snapshot stores (after compression).
    #[arg(long, default_value = "8g", value_parser = viaduct_pipeline::duration::parse_memory)]
    max_snapshot_size: u64,
    /// Most new content all snapshots of one job store together (every
    /// attempt): past it, no more are kept.
    #[arg(long, default_value = "16g", value_parser = viaduct_pipeline::duration::parse_memory)]
    max_snapshot_size_per_job: u64,
    /// Artifacts are deleted this long after upload.
    #[arg(long, default_value = "30d", value_parser = viaduct_pipeline::duration::parse_duration)]
    artifact_ttl: Duration,
    /// Largest single artifact file.
    #[arg(long, default_value = "8g", value_parser = viaduct_pipeline::duration::parse_memory)]
    max_artifact_size: u64,
    /// Most artifact files one job attempt uploads.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_artifacts_per_job: u32,
    /// Most bytes of artifacts one job attempt uploads, all files together.
    #[arg(long, default_value = "16g", value_parser = artifact_bytes_per_job)]
    max_artifact_bytes_per_job: u64,
    /// Most bytes of source archives (the commits runners fetched) kept;
    /// past it the least recently fetched go (they are built again when
    /// needed).
    #[arg(long, default_value = "10g", value_parser = source_archives_size)]
    max_source_archives_size: u64,
    /// Serve TLS with this certificate chain (PEM); reloaded on SIGHUP and
    /// when the file changes.
    #[arg(long, env = "VIADUCT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "VIADUCT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept client certificates signed by this CA (PEM), and require
    /// one from runners (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Failed authentications one client address may make per minute
    /// before it is refused for a while (0: no limit).
    #[arg(long, default_value_t = 30)]
    auth_failures_per_minute: u32,
    /// API calls one token may make per second, in bursts of up to ten
    /// times that (0: no limit).
    #[arg(long, default_value_t = 0)]
    token_rate_limit: u32,
    /// Also serve `/metrics` on this address, without a token (for a
    /// scraper on a private network); on the main port it needs a token.
    #[arg(long, env = "VIADUCT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Email notifications (`notify: - email:`) through this mail server:
    /// `smtp://HOST[:PORT]` (STARTTLS required; plain SMTP only to this
    /// machine) or `smtps://HOST[:PORT]`. Without it, email notifications
    /// are dropped.
    #[arg(long, env = "VIADUCT_SMTP_URL", requires = "smtp_from")]
    smtp_url: Option<String>,
    /// The `From:` of email notifications, e.g. `Viaduct <ci@example.com>`.
    #[arg(long, env = "VIADUCT_SMTP_FROM")]
    smtp_from: Option<String>,
    /// The mail server's user name.
    #[arg(long, env = "VIADUCT_SMTP_USER", requires = "smtp_password_file")]
    smtp_user: Option<String>,
    /// A file holding the mail server's password (not an argument: others
    /// on the machine can read a process's arguments).
    #[arg(long, requires = "smtp_user")]
    smtp_password_file: Option<PathBuf>,
    /// The only recipient domains of email notifications (comma-separated;
    /// a pipeline names the addresses, so without this no mail goes out).
    #[arg(long, env = "VIADUCT_SMTP_ALLOWED_DOMAINS", value_delimiter = ',')]
    smtp_allowed_domains: Vec<String>,
    /// Single sign-on: give members of GROUP a role, on every repository
    /// or on REPO (GROUP=ROLE or GROUP=ROLE:REPO; repeatable).
    #[arg(long = "oidc-group-role", value_parser = parse_group_role)]
    group_roles: Vec<(String, viaduct_proto::v1::Grant)>,
    /// Single sign-on: the OpenID provider's issuer URL (the web UI and
    /// `viaduct login` then sign people in there).
    #[arg(long, env = "VIADUCT_OIDC_ISSUER", requires = "oidc_client_id")]
    oidc_issuer: Option<String>,
    /// This server's client id at the provider (its redirect URL is
    /// PUBLIC_URL/auth/callback).
    #[arg(long, env = "VIADUCT_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// A file holding the client secret (none: a public client, PKCE only).
    #[arg(long, env = "VIADUCT_OIDC_CLIENT_SECRET_FILE")]
    oidc_client_secret_file: Option<PathBuf>,
    /// Scopes to ask for besides `openid` (comma-separated).
    #[arg(long, default_value = "profile,email,groups", value_delimiter = ',')]
    oidc_scopes: Vec<String>,
    /// The ID token claim that names the user.
    #[arg(long, default_value = "preferred_username")]
    oidc_username_claim: String,
    /// The ID token claim that lists the user's groups.
    #[arg(long, default_value = "groups")]
    oidc_groups_claim: String,
    /// Trust this CA (PEM) for the provider, besides the system's.
    #[arg(long)]
    oidc_ca_cert: Option<PathBuf>,
    /// How long a web UI session lasts.
    #[arg(long, default_value = "12h", value_parser = viaduct_pipeline::duration::parse_duration)]
    session_ttl: Duration,
    /// Keep finished runs (with their logs and artifacts) this long after
    /// they finished; `forever` (or 0) keeps them. Repositories and stored
    /// pipelines may override it (`viaduct repos retention`).
    #[arg(long, default_value = "90d", value_parser = viaduct_pipeline::duration::parse_duration_or_forever)]
    keep_runs_for: Duration,
    /// Always keep the newest this many runs of each pipeline.
    #[arg(long, default_value_t = 50)]
    keep_runs_last: u32,
    /// Always keep the newest successful run of each branch.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    keep_last_success: bool,
    /// The least time a repository's or stored pipeline's retention policy
    /// may keep runs (shorter settings count as this): how fast
    /// maintainers may erase their runs' history.
    #[arg(long, default_value = "0s", value_parser = viaduct_pipeline::duration::parse_duration_or_forever)]
    min_keep_runs_for: Duration,
    /// Keep the event log (what Runs.Watch replays) this long; `forever`
    /// (or 0) keeps it.
    #[arg(long, default_value = "30d", value_parser = viaduct_pipeline::duration::parse_duration_or_forever)]
    keep_events_for: Duration,
    /// A run still awaiting approval (a stranger's pull request) this long
    /// after it was accepted is cancelled by the retention pass, and then
    /// goes like any finished run; `forever` (or 0) keeps it waiting.
    #[arg(long, default_value = "30d", value_parser = viaduct_pipeline::duration::parse_duration_or_forever)]
    approvals_expire_after: Duration,
    /// How often retention runs by itself (`forever` or 0: only by
    /// `viaduct admin prune`).
    #[arg(long, default_value = "10m", value_parser = viaduct_pipeline::duration::parse_duration_or_forever)]
    retention_every: Duration,
    /// Keep this much free on the data directory's disk: below it new runs,
    /// retries, cache saves and artifacts are refused (RESOURCE_EXHAUSTED)
    /// until space returns, while reads and running jobs go on.
    #[arg(long, default_value = "1g", value_parser = viaduct_pipeline::duration::parse_memory)]
    min_free_disk: u64,
    /// Tests only: run schedules on a clock SPEED times faster from EPOCH
    /// (unix seconds), as EPOCH:SPEED.
    #[arg(long, hide = true, value_parser = viaduct_server::triggers::schedule::Clock::parse)]
    test_clock: Option<viaduct_server::triggers::schedule::Clock>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Compacts the embedded database (the server stopped): copies every
    /// live record into a fresh database and swaps it in, giving back the
    /// space retention freed (sled never shrinks its files by itself).
    Compact {
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run by the post-receive hook of hosted repositories: tells the server
    /// that repository REPO received a push.
    Hook {
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The repository.
        #[arg(long)]
        repo: String,
    },
}

fn parse_group_role(text: &str) -> Result<(String, viaduct_proto::v1::Grant), String> {
    viaduct_server::users::GroupRoles::parse_one(text).map_err(|e| e.to_string())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// `--store-cache`: 4 MiB to 64 GiB.
fn store_cache(s: &str) -> Result<u64, String> {
    let n = viaduct_pipeline::duration::parse_memory(s)?;
    if !(4 << 20..=64 << 30).contains(&n) { Err(format!("`{s}`: the store's cache is 4m to 64g")) } else { Ok(n) }
}

/// `--max-source-archives-size`: at least 64 MiB (below it every fetch
/// would build its archive again).
fn source_archives_size(s: &str) -> Result<u64, String> {
    let n = viaduct_pipeline::duration::parse_memory(s)?;
    if n < 64 << 20 { Err(format!("`{s}` is under the least size of source archives kept, 64m")) } else { Ok(n) }
}

/// `--max-artifact-bytes-per-job`: at least 1 MiB (a typo like `16`
/// would fail every artifact).
fn artifact_bytes_per_job(s: &str) -> Result<u64, String> {
    let n = viaduct_pipeline::duration::parse_memory(s)?;
    if n < 1 << 20 { Err(format!("`{s}` is under the least artifact quota of a job, 1m")) } else { Ok(n) }
}

/// `--max-step-log`, `--max-job-log`: at least 64 KiB (the runner reads 0
/// as its default).
fn log_limit(s: &str) -> Result<u64, String> {
    let n = viaduct_pipeline::duration::parse_memory(s)?;
    if n < 64 << 10 { Err(format!("`{s}` is under the least log limit, 64k")) } else { Ok(n) }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Spans are exported by the server proper, not by its subcommands.
    let otlp = if args.command.is_none() { args.otlp_endpoint.as_deref() } else { None };
    let _logging = match viaduct_telemetry::init("viaduct-server", "info,h2=warn,tower=warn", otlp, &[]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("viaduct-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Hook { data_dir, repo }) = &args.command {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("viaduct: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(viaduct_server::hook(data_dir, repo)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("viaduct: could not tell the server about this push: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Compact { data_dir }) = &args.command {
        return match viaduct_server::store::compact::compact(&data_dir.join("db")) {
            Ok(c) => {
                println!("database compacted: {:.1} MiB → {:.1} MiB", mib(c.before), mib(c.after));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("viaduct-server: cannot compact the database: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let store = match viaduct_server::StoreConfig::parse(
        &args.store,
        args.store_password_file.as_deref(),
        args.store_ca_file.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("viaduct-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let blobs = match viaduct_server::blobs::BlobConfig::parse(&args.blob_store, args.blob_store_secret_file.as_deref())
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("viaduct-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cfg = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        store,
        store_cache: args.store_cache,
        blobs,
        engine: EngineConfig {
            lease_ttl: args.lease_ttl,
            heartbeat_interval: args.heartbeat_interval,
            priority_aging: args.priority_aging,
            max_running_jobs: args.max_running_jobs,
            max_running_per_pipeline: args.max_running_per_pipeline,
            retry_backoff: args.retry_backoff,
            max_step_log_bytes: args.max_step_log,
            max_job_log_bytes: args.max_job_log,
            snapshots: args.snapshots,
            hold_failed: args.hold_failed_workspace,
            ..EngineConfig::default()
        },
        public_url: args.public_url,
        clock: args.test_clock.unwrap_or_default(),
        schedule_catch_up: args.schedule_catch_up,
        depot: viaduct_server::depot::DepotConfig {
            caches: viaduct_server::caches::CacheLimits {
                max_bytes: args.cache_max_size,
                max_scope_bytes: args.cache_max_size_per_repo,
                max_entry_bytes: args.cache_max_entry_size,
                ttl: args.cache_ttl,
            },
            artifact_ttl: args.artifact_ttl,
            max_artifact_bytes: args.max_artifact_size,
            artifacts_per_job: viaduct_server::artifacts::JobQuota {
                files: args.max_artifacts_per_job as usize,
                bytes: args.max_artifact_bytes_per_job,
            },
            max_source_archive_bytes: args.max_source_archives_size,
            snapshots: viaduct_server::snapshots::SnapshotLimits {
                ttl: args.snapshot_ttl,
                keep_runs: args.snapshot_keep_runs,
                max_pack_bytes: args.max_snapshot_size,
                max_job_bytes: args.max_snapshot_size_per_job,
            },
        },
        min_free_disk: args.min_free_disk,
        retention: viaduct_server::retention::RetentionConfig {
            keep_for: args.keep_runs_for,
            keep_last: args.keep_runs_last,
            keep_last_success: args.keep_last_success,
            min_keep_for: args.min_keep_runs_for,
            keep_events_for: args.keep_events_for,
            approvals_expire_after: args.approvals_expire_after,
            every: args.retention_every,
        },
        plugins_dir: args.plugins_dir,
        ui_dir: args.ui_dir,
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| viaduct_server::tls::TlsFiles {
            cert,
            key,
            client_ca: args.client_ca,
        }),
        limits: viaduct_server::throttle::Limits {
            auth_failures_per_minute: args.auth_failures_per_minute,
            calls_per_second: args.token_rate_limit,
        },
        metrics_listen: args.metrics_listen,
        smtp: match args.smtp_url {
            None => None,
            Some(url) => Some(viaduct_server::notify::SmtpConfig {
                url,
                from: args.smtp_from.unwrap_or_default(),
                allowed_domains: args.smtp_allowed_domains,
                credentials: match (args.smtp_user, &args.smtp_password_file) {
                    (Some(user), Some(file)) => match std::fs::read_to_string(file) {
                        Ok(p) => Some((user, p.trim_end_matches(['\r', '\n']).to_string())),
                        Err(e) => {
                            eprintln!("viaduct-server: cannot read {}: {e}", file.display());
                            return ExitCode::from(2);
                        }
                    },
                    _ => None,
                },
            }),
        },
        group_roles: viaduct_server::users::GroupRoles(args.group_roles),
        sso: match args.oidc_issuer {
            None => None,
            Some(issuer) => Some(viaduct_server::sso::SsoConfig {
                issuer,
                client_id: args.oidc_client_id.unwrap_or_default(),
                client_secret: match &args.oidc_client_secret_file {
                    None => None,
                    Some(f) => match std::fs::read_to_string(f) {
                        Ok(s) => Some(s.trim().to_string()),
                        Err(e) => {
                            eprintln!("viaduct-server: cannot read {}: {e}", f.display());
                            return ExitCode::from(2);
                        }
                    },
                },
                scopes: args.oidc_scopes,
                username_claim: args.oidc_username_claim,
                groups_claim: args.oidc_groups_claim,
                ca_cert: args.oidc_ca_cert,
            }),
        },
        session_ttl: args.session_ttl,
        replica: args.replica.then(|| viaduct_server::replicas::ReplicaConfig {
            advertise_url: args.advertise_url.clone(),
            ca_file: args.replica_ca_file.clone(),
        }),
        secret_key_file: args.secret_key_file,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viaduct-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker, not on this thread: what wakes it (a socket's
    // readiness, a task it waits for) and what it spawns then stay on the
    // workers, without a hop through this thread each time.
    match runtime.block_on(async { tokio::spawn(viaduct_server::run(cfg, shutdown_signal())).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("viaduct-server: {e:#}");
            ExitCode::FAILURE
        }
        // It panicked: as if it had here.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            eprintln!("viaduct-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
