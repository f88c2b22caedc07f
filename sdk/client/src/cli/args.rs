//! Command-line arguments of `viaduct`.
//!
//! Every enum of subcommands is deferred (`defer = true`): a command line
//! builds the arguments of the subcommands it names and no others (building
//! all of them cost ~0.2 ms of every invocation). So an `Args` struct that is
//! a subcommand's (or flattened into one) carries a plain `//` comment, not a
//! doc comment: built late, its doc comment would replace the subcommand's
//! own help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The Viaduct CI command-line client.
///
/// Exit codes: 0 success; 1 the run failed (or was cancelled / timed out);
/// 2 usage error or invalid input (e.g. a pipeline file with errors);
/// 3 the server could not be reached or refused the request.
#[derive(Debug, Parser)]
#[command(name = "viaduct", version, about, long_about = None)]
pub struct Cli {
    /// Server URL.
    #[arg(long, global = true, env = "VIADUCT_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// API token.
    #[arg(long, global = true, env = "VIADUCT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the API token from this file (e.g. the server's DATA_DIR/admin-token).
    #[arg(long, global = true, env = "VIADUCT_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Trust this CA (PEM) besides the system's, for https:// servers.
    #[arg(long, global = true, env = "VIADUCT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Allow http:// to another machine (tokens cross the network in
    /// plaintext: only on a network you trust).
    #[arg(long, global = true, env = "VIADUCT_INSECURE")]
    pub insecure: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Submit a pipeline file as a run; prints the run id (or, with
    /// --follow, its logs, and exits with its outcome).
    Submit(SubmitArgs),
    /// Run a pipeline file on this machine, without a server: the same job
    /// runner and executors as a runner (`viaduct-runner exec`, which must
    /// be next to this executable or on PATH; `viaduct exec --help` lists
    /// its options). Exit status: 0 success, 1 the run failed, 2 invalid
    /// input.
    #[command(disable_help_flag = true)]
    Exec {
        /// `[FILE] [--job J] …`: passed to `viaduct-runner exec`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Check pipeline files offline; prints file:line:column errors.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Inspect and control runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Publish and inspect WASI step plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// List and download a run's artifacts.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Inspect and clear build caches.
    #[command(subcommand)]
    Caches(CachesCommand),
    /// Print the logs of a run, job (42.1) or step (42.1.3).
    Logs {
        /// Run, job or step id.
        id: String,
        /// Keep streaming until it finishes.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a run, or one of its jobs.
    Cancel(CancelArgs),
    /// Re-run the failed jobs of a finished run — whole, or from the failed
    /// step on a snapshot of the workspace (`--from-failed`, `--from`).
    Retry(RetryArgs),
    /// Open a shell in a job's workspace as its snapshot after a step
    /// kept it, on a runner that can run the job (in its image for a
    /// container job), with the job's environment minus its secrets. Exits
    /// with the shell's exit code.
    Debug(DebugArgs),
    /// Stream run, job and step state changes.
    Watch {
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Resume after this cursor.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Manage runners.
    #[command(subcommand)]
    Runners(RunnersCommand),
    /// Manage stored pipelines.
    #[command(subcommand)]
    Pipelines(PipelinesCommand),
    /// Manage repositories (hosted, or mirrors of a forge).
    #[command(subcommand)]
    Repos(Box<ReposCommand>),
    /// Manage secrets (values jobs read as env when they list them).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Manage a repository's environments (deployment targets, their
    /// rules and variables) and see what is deployed where.
    #[command(subcommand, alias = "envs")]
    Environments(crate::cli::deployments::EnvironmentsCommand),
    /// List, approve and reject deployments.
    #[command(subcommand)]
    Deployments(crate::cli::deployments::DeploymentsCommand),
    /// Deploy again: promote what one environment runs to another, or roll
    /// an environment back to what it ran before.
    #[command(subcommand)]
    Deploy(crate::cli::deployments::DeployCommand),
    /// The services deployments registered, and their health.
    #[command(subcommand)]
    Services(crate::cli::deployments::ServicesCommand),
    /// Manage API tokens (yours; an admin's: everyone's).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Who the token is, and what it may do.
    Whoami,
    /// Sign in with the server's single sign-on (a browser); keeps a token
    /// for this server in the config directory, used when no token is given.
    Login {
        /// Only print the address to open (on a machine without a browser,
        /// open it elsewhere: the redirect still comes back to this one's
        /// loopback port, so use a browser here or an ssh tunnel).
        #[arg(long)]
        no_browser: bool,
    },
    /// Revoke the token `viaduct login` kept for this server and forget it.
    Logout,
    /// Manage users and their roles (admins).
    #[command(subcommand)]
    Users(UsersCommand),
    /// How runs went over a range: per bucket, per pipeline, per runner
    /// label (aggregated on the server).
    Stats(StatsArgs),
    /// Operate the server (admins).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Read the audit log: privileged actions, newest first (admins).
    Audit {
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries older than this id (the next page).
        #[arg(long, default_value_t = 0)]
        before: u64,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Start a run of a repository by hand (its pipeline must allow `manual`).
    Trigger {
        /// The repository.
        #[arg(long)]
        repo: String,
        /// Branch, tag or ref (default: the default branch).
        #[arg(long = "ref", conflicts_with = "commit")]
        git_ref: Option<String>,
        /// A commit id.
        #[arg(long)]
        commit: Option<String>,
        /// Input values, NAME=VALUE (repeatable).
        #[arg(long = "input", value_parser = key_value)]
        inputs: Vec<(String, String)>,
        /// Stream the logs and exit with the run's outcome.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `viaduct secrets …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum SecretsCommand {
    /// Create or replace a secret; the value is read from stdin unless given.
    /// Its scope says which runs may have it (every rule given must hold).
    Set {
        /// Name (an environment variable name).
        name: String,
        /// The value (better: pipe it on stdin, out of the shell history).
        value: Option<String>,
        /// Only runs of this repository (repeatable).
        #[arg(long = "repo", value_name = "REPO")]
        repos: Vec<String>,
        /// Only runs of this pipeline, by `name:` (repeatable).
        #[arg(long = "pipeline", value_name = "NAME")]
        pipelines: Vec<String>,
        /// Only runs of branches matching this glob, e.g. `main` or
        /// `release/*` (repeatable).
        #[arg(long = "branch", value_name = "GLOB")]
        branches: Vec<String>,
        /// Also runs of trusted pull requests (never untrusted ones).
        #[arg(long)]
        pull_requests: bool,
        /// Registry credentials (`user:password`) for this registry host
        /// only, e.g. `ghcr.io` or `127.0.0.1:5000`.
        #[arg(long, value_name = "HOST")]
        registry: Option<String>,
        /// For the server only, never given to a job or named by a
        /// notification: a forge token or GitHub App key (which must be).
        #[arg(long)]
        server_only: bool,
        /// Only jobs that deploy to this environment of the --repo
        /// repositories, once its rules passed (repeatable).
        #[arg(long = "environment", value_name = "NAME", requires = "repos")]
        environments: Vec<String>,
    },
    /// List secret names.
    List,
    /// Delete a secret.
    Delete {
        /// Name.
        name: String,
    },
}

/// `viaduct repos …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ReposCommand {
    /// Create a hosted repository (push to it), or a mirror with --mirror.
    Create {
        /// Name.
        name: String,
        /// Follow this remote (https://, ssh:// or file://) instead.
        #[arg(long)]
        mirror: Option<String>,
        /// Mirrors: poll every N seconds (0 = only webhooks and sync).
        #[arg(long, default_value_t = 0)]
        poll: u32,
        /// Mirrors: the webhook secret (default: generated).
        #[arg(long)]
        webhook_secret: Option<String>,
        /// Mirrors: a secret to fetch with — `user:password` or a token for
        /// https, a private key for ssh (default: the server user's ssh
        /// agent and keys, or git's credential helper).
        #[arg(long, value_name = "SECRET")]
        credentials: Option<String>,
        /// Hosted: the default branch.
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Mirrors: trust pull requests of this forge login (repeatable).
        #[arg(long = "trust-sender", value_name = "LOGIN")]
        trust_senders: Vec<String>,
        #[command(flatten)]
        forge: ForgeArgs,
    },
    /// Report a mirror's runs to its forge as commit statuses (admin): each
    /// run as `viaduct/<pipeline>`, each job as `viaduct/<pipeline>/<job>`.
    Forge {
        /// Name.
        name: String,
        #[command(flatten)]
        forge: ForgeArgs,
        /// Stop reporting.
        #[arg(long, conflicts_with = "forge")]
        remove: bool,
    },
    /// Set who a repository trusts to run pull requests without approval.
    Trust {
        /// Name.
        name: String,
        /// Forge logins trusted whatever the forge says (repeatable).
        #[arg(long = "sender", value_name = "LOGIN")]
        senders: Vec<String>,
        /// GitHub author associations trusted (repeatable; default OWNER,
        /// MEMBER, COLLABORATOR). `--association none` trusts none.
        #[arg(long = "association", value_name = "ASSOCIATION")]
        associations: Vec<String>,
    },
    /// Set how long a repository's runs are kept: the flags given change
    /// those fields, the others keep what was set (no flag: show the
    /// policy; --defaults: forget it).
    Retention {
        /// Name.
        name: String,
        #[command(flatten)]
        policy: RetentionArgs,
        /// Forget the repository's policy: the server's defaults apply.
        #[arg(long, conflicts_with_all = ["keep_for", "keep_last", "keep_last_success"])]
        defaults: bool,
    },
    /// List repositories.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a repository (clone URL, webhook URL and secret).
    Get {
        /// Name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a repository and the server's copy of it.
    Delete {
        /// Name.
        name: String,
    },
    /// Fetch (mirrors) and start runs for refs that moved.
    Sync {
        /// Name.
        name: String,
    },
}

// `viaduct submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The pipeline file (e.g. .viaduct/pipeline.yml).
    pub file: PathBuf,
    /// Stream the logs live; exit 0 if the run succeeds, 1 if not.
    #[arg(short, long)]
    pub follow: bool,
    /// Priority 0–10 (overrides the file's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub priority: Option<u32>,
    /// Input values, NAME=VALUE (repeatable).
    #[arg(long = "input", value_parser = key_value)]
    pub inputs: Vec<(String, String)>,
    /// A job that fails keeps its live workspace (files, processes,
    /// container) on its runner for a while, for `viaduct debug --live`.
    #[arg(long)]
    pub keep_on_failure: bool,
}

/// `viaduct runs …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs in these states (repeatable): queued, running, success, …
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only runs of this branch.
        #[arg(long)]
        branch: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue from a previous listing's next-page token.
        #[arg(long)]
        page_token: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one run with its jobs and steps.
    Get {
        /// Run id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run, or one of its jobs.
    Cancel(CancelArgs),
    /// Re-run the failed jobs of a finished run — whole, or from the failed
    /// step on a snapshot of the workspace (`--from-failed`, `--from`).
    Retry(RetryArgs),
    /// Let a run that waits for approval (an untrusted pull request) start.
    /// It still gets no secrets.
    Approve {
        /// Run id.
        id: String,
    },
}

/// `viaduct runners …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum RunnersCommand {
    /// List runners.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One runner: labels, toolchains found on its machine (`rust:1.95`…),
    /// executors, slots, state.
    Get {
        /// Runner id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Jobs waiting for a runner, in queue order, with what a runner needs
    /// to take each (labels, executor, trust) and whether one was started
    /// for it.
    Pending,
    /// Follow the fleet: every runner, then one line per change
    /// (connected, disconnected, draining, paused…) as it happens.
    Watch {
        /// Print one JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Stop giving a runner new jobs (it finishes the ones it has).
    Drain {
        /// Runner id.
        id: String,
        /// Give it jobs again.
        #[arg(long)]
        undo: bool,
    },
    /// Forget a runner and revoke its token.
    Remove {
        /// Runner id.
        id: String,
    },
    /// Change what a runner may do (pinned when it registered): labels,
    /// slots, executors, protection.
    Update {
        /// Runner id.
        id: String,
        /// Labels it may advertise (comma-separated), replacing the old.
        #[arg(long, value_delimiter = ',')]
        labels: Option<Vec<String>>,
        /// Most jobs at once.
        #[arg(long)]
        slots: Option<u32>,
        /// Executors it may offer (comma-separated: host, container, wasi).
        #[arg(long, value_delimiter = ',', value_parser = executor)]
        executors: Option<Vec<viaduct_sdk::proto::v1::Executor>>,
        /// Take only jobs of trusted runs.
        #[arg(long, conflicts_with = "unprotected")]
        protected: bool,
        /// Take jobs of untrusted runs too.
        #[arg(long)]
        unprotected: bool,
    },
    /// Create a registration token for a new runner.
    Token {
        /// Allow registering many runners with it.
        #[arg(long, conflicts_with = "job")]
        reusable: bool,
        /// Bind it to one waiting job (e.g. 42.1): it registers one
        /// ephemeral runner that takes that job only, and the job waits for
        /// it (a just-in-time runner).
        #[arg(long)]
        job: Option<String>,
    },
}

// A mirror's forge connection.
#[derive(Debug, Args, Default)]
pub struct ForgeArgs {
    /// Report commit statuses to this forge: github, gitlab, gitea or forgejo.
    #[arg(long, value_name = "KIND")]
    pub forge: Option<String>,
    /// The forge's API (default: GitHub's, or https://HOST/api/v4 for
    /// GitLab and https://HOST/api/v1 for Gitea from the mirror's URL).
    #[arg(long, value_name = "URL", requires = "forge")]
    pub forge_api_url: Option<String>,
    /// The repository as the forge names it (default: from the mirror's URL).
    #[arg(long, value_name = "OWNER/NAME", requires = "forge")]
    pub forge_project: Option<String>,
    /// The secret holding the forge's access token; it must be scoped to
    /// this repository (`viaduct secrets set NAME --repo REPO`).
    #[arg(long, value_name = "SECRET", requires = "forge")]
    pub forge_token_secret: Option<String>,
    /// Contexts are `PREFIX/<pipeline>[/<job>]` (default `viaduct`).
    #[arg(long, value_name = "PREFIX", requires = "forge")]
    pub forge_context_prefix: Option<String>,
    /// GitHub: sign in as this GitHub App (check runs instead of statuses;
    /// its "Re-run" retries the run) instead of with a token.
    #[arg(long, value_name = "ID", requires = "forge_app_key_secret", conflicts_with = "forge_token_secret")]
    pub forge_app_id: Option<String>,
    /// The secret holding the GitHub App's private key (PEM), scoped to
    /// this repository.
    #[arg(long, value_name = "SECRET", requires = "forge_app_id")]
    pub forge_app_key_secret: Option<String>,
    /// The app's installation on the repository (default: looked up).
    #[arg(long, value_name = "ID", requires = "forge_app_id")]
    pub forge_installation_id: Option<u64>,
    /// The secret holding the GitHub App's webhook secret: its "Re-run"
    /// buttons then reach `/webhooks/github-app/<id>`.
    #[arg(long, value_name = "SECRET", requires = "forge_app_id")]
    pub forge_app_webhook_secret: Option<String>,
    /// Put the failing step's last log lines and `file:line` annotations in
    /// check runs (whoever sees the repository on the forge sees them).
    #[arg(long, requires = "forge_app_id")]
    pub forge_check_logs: bool,
}

impl ForgeArgs {
    /// The connection the flags describe (`None` without `--forge`).
    pub fn connection(self) -> Option<viaduct_sdk::proto::v1::ForgeConnection> {
        Some(viaduct_sdk::proto::v1::ForgeConnection {
            kind: self.forge?,
            api_url: self.forge_api_url.unwrap_or_default(),
            project: self.forge_project.unwrap_or_default(),
            token_secret: self.forge_token_secret.unwrap_or_default(),
            context_prefix: self.forge_context_prefix.unwrap_or_default(),
            app_id: self.forge_app_id.unwrap_or_default(),
            app_key_secret: self.forge_app_key_secret.unwrap_or_default(),
            installation_id: self.forge_installation_id.unwrap_or_default(),
            check_logs: self.forge_check_logs,
            app_webhook_secret: self.forge_app_webhook_secret.unwrap_or_default(),
        })
    }
}

// A retention policy's flags (unset: inherited).
#[derive(Debug, Args, Default)]
pub struct RetentionArgs {
    /// Keep finished runs this long after they finished (e.g. 90d, at
    /// least 1s; `forever` keeps them).
    #[arg(long, value_parser = keep_for)]
    pub keep_for: Option<std::time::Duration>,
    /// Always keep the newest this many runs.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Always keep the newest successful run of each branch (true/false).
    #[arg(long)]
    pub keep_last_success: Option<bool>,
}

/// `--keep-for`: `forever`, or at least a second (whole seconds).
fn keep_for(text: &str) -> Result<std::time::Duration, String> {
    let d = viaduct_pipeline::duration::parse_duration_or_forever(text)?;
    if !d.is_zero() && d.as_secs() == 0 {
        return Err(format!("`{text}` is under a second (retention counts whole seconds; `forever` keeps runs)"));
    }
    Ok(d)
}

// `viaduct stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The range: up to now, from this long ago.
    #[arg(long, default_value = "7d", value_parser = viaduct_pipeline::duration::parse_duration)]
    pub since: std::time::Duration,
    /// Bucket width: hour, day or week.
    #[arg(long, default_value = "day")]
    pub by: String,
    /// Only this repository's runs.
    #[arg(long, default_value = "")]
    pub repo: String,
    /// Only this pipeline's runs.
    #[arg(long, default_value = "")]
    pub pipeline: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `viaduct admin …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum AdminCommand {
    /// The server's state: version, store size per tree, disk, queue,
    /// runners, retention.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply run and event retention now (what the server does every
    /// --retention-every), or with --dry-run only say what would go.
    Prune {
        /// Remove nothing; list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `viaduct pipelines …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum PipelinesCommand {
    /// List stored pipelines.
    List,
    /// Print a stored pipeline's YAML.
    Get {
        /// Name.
        name: String,
    },
    /// Store a pipeline file under a name (replacing it with --update).
    Create {
        /// Name.
        name: String,
        /// Pipeline file.
        file: PathBuf,
        /// Replace an existing pipeline.
        #[arg(long)]
        update: bool,
        #[command(flatten)]
        policy: RetentionArgs,
    },
    /// Delete a stored pipeline.
    Delete {
        /// Name.
        name: String,
    },
    /// Start a run of a stored pipeline.
    Trigger {
        /// Name.
        name: String,
        /// Input values, NAME=VALUE (repeatable).
        #[arg(long = "input", value_parser = key_value)]
        inputs: Vec<(String, String)>,
        /// Stream the logs and exit with the run's outcome.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `viaduct plugins …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum PluginsCommand {
    /// Publish a plugin component with its manifest.
    Publish {
        /// The component (.wasm, built for wasm32-wasip2).
        wasm: PathBuf,
        /// The manifest (default: NAME.toml next to NAME.wasm, else
        /// plugin.toml in the current directory).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Replace an already published version with different bytes.
        #[arg(long)]
        replace: bool,
    },
    /// List published plugins.
    List {
        /// Only this plugin.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin version: NAME, NAME@1, NAME@1.2 or NAME@1.2.3.
    Get {
        /// Reference.
        reference: String,
    },
}

/// `viaduct artifacts …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ArtifactsCommand {
    /// List a run's artifacts.
    List {
        /// Run id.
        run: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download artifacts: one by name, or with a trailing `/` or `*` every
    /// artifact under that prefix; into DIR (default: the current
    /// directory), keeping their paths.
    Get {
        /// Run id.
        run: String,
        /// Artifact name (workspace path), a prefix ending in `/` or `*`, or
        /// `*` for all.
        name: String,
        /// Only this job's (when several jobs have the name).
        #[arg(long)]
        job: Option<String>,
        /// Directory to write into.
        #[arg(short = 'o', long = "output", default_value = ".")]
        dir: PathBuf,
    },
}

/// `viaduct caches …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum CachesCommand {
    /// List cache entries.
    List {
        /// Only this scope (repository, or pipeline:NAME).
        #[arg(long)]
        scope: Option<String>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Delete cache entries of a scope.
    Delete {
        /// Repository, or pipeline:NAME.
        scope: String,
        /// Only this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Totals, limits and hit counts.
    Stats,
}

/// `viaduct tokens …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum TokensCommand {
    /// Create a token; prints its secret (shown once) on stdout.
    Create {
        /// A name to know it by.
        name: String,
        /// A role, on every repository (ROLE) or one (ROLE:REPO); repeatable.
        /// Default: all of yours. Roles: read, trigger, push, maintain, admin.
        #[arg(long = "grant", value_parser = grant)]
        grants: Vec<viaduct_sdk::proto::v1::Grant>,
        /// It stops working after this long (e.g. 30d, 12h).
        #[arg(long, value_parser = viaduct_pipeline::duration::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// A service token, acting for no user (admins).
        #[arg(long, conflicts_with = "user")]
        service: bool,
        /// A token for this user (admins).
        #[arg(long)]
        user: Option<String>,
        /// A runner registration token (admins), good for this many runners.
        #[arg(long)]
        registration: Option<u32>,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once (also its open streams).
    Revoke {
        /// Its id (tok_…).
        id: String,
    },
    /// Replace a token's secret; the old one stops working at once.
    Rotate {
        /// Its id (tok_…).
        id: String,
    },
}

/// `viaduct users …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum UsersCommand {
    /// Add a local user.
    Create {
        /// Login name.
        name: String,
        /// A role, on every repository (ROLE) or one (ROLE:REPO); repeatable.
        #[arg(long = "grant", value_parser = grant)]
        grants: Vec<viaduct_sdk::proto::v1::Grant>,
        /// Shown name.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List users.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a user's roles (takes effect at once, for their tokens too).
    Grant {
        /// Login name.
        name: String,
        /// A role, on every repository (ROLE) or one (ROLE:REPO); repeatable;
        /// none: no role at all.
        #[arg(long = "grant", value_parser = grant)]
        grants: Vec<viaduct_sdk::proto::v1::Grant>,
    },
    /// Remove a user; their tokens stop working at once.
    Delete {
        /// Login name.
        name: String,
    },
}

/// `ROLE` or `ROLE:REPO`.
pub fn grant(s: &str) -> Result<viaduct_sdk::proto::v1::Grant, String> {
    use viaduct_sdk::proto::{ROLE_WORDS, RoleWord as _, v1::Role};
    let (role, repo) = s.split_once(':').unwrap_or((s, ""));
    let role = Role::from_word(role).ok_or_else(|| format!("`{role}` is not a role ({ROLE_WORDS})"))?;
    Ok(viaduct_sdk::proto::v1::Grant { role: role as i32, repo: repo.to_string() })
}

/// `host`, `container` or `wasi`.
pub fn executor(s: &str) -> Result<viaduct_sdk::proto::v1::Executor, String> {
    use viaduct_sdk::proto::{EXECUTOR_WORDS, ExecutorWord as _, v1::Executor};
    Executor::from_word(s).ok_or_else(|| format!("`{s}` is not an executor ({EXECUTOR_WORDS})"))
}

pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))
}

// `viaduct debug`.
#[derive(Debug, clap::Args)]
pub struct DebugArgs {
    /// The job's id (e.g. 42.1).
    pub job: String,
    /// Restore the snapshot after this step (default: the newest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "live")]
    pub step: Option<u32>,
    /// The failed job's live workspace, as its runner holds it (a run
    /// submitted or retried with --keep-on-failure), instead of a snapshot.
    #[arg(long)]
    pub live: bool,
    /// End the shell after this long (default 30m, at most 4h).
    #[arg(long, value_parser = viaduct_pipeline::duration::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

// `viaduct retry` / `viaduct runs retry`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("resume").args(["from_failed", "from"])))]
pub struct RetryArgs {
    /// Run id.
    pub id: String,
    /// Resume each failed job from its first failed step, on the snapshot
    /// of its workspace after the step before (the pipeline needs
    /// `snapshots: true`).
    #[arg(long, conflicts_with = "from")]
    pub from_failed: bool,
    /// Resume from this step (1-based) of `--job` (or of the run's one
    /// failed job).
    #[arg(long, value_name = "STEP", value_parser = clap::value_parser!(u32).range(1..))]
    pub from: Option<u32>,
    /// The job to resume (its id, key or name); the others that failed are
    /// re-run whole.
    #[arg(long, requires = "resume")]
    pub job: Option<String>,
    /// A job that fails again keeps its live workspace (files, processes,
    /// container) on its runner for a while, for `viaduct debug --live`.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Then follow its logs and exit with its outcome.
    #[arg(short, long)]
    pub follow: bool,
}

// `viaduct cancel` / `viaduct runs cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// Run id.
    pub id: String,
    /// Only this job of the run (e.g. 42.1); jobs that need it are skipped.
    #[arg(long)]
    pub job: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Checks, under `path`, that building each deferred subcommand keeps
    /// the help its variant gave it (see the module's documentation).
    fn check(cmd: &clap::Command, path: &str, seen: &mut usize) {
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            let mut built = sub.clone();
            built.build();
            assert_eq!(
                built.get_about().map(ToString::to_string),
                sub.get_about().map(ToString::to_string),
                "`{path}`: an Args struct's doc comment replaced the subcommand's help"
            );
            *seen += 1;
            check(&built, &path, seen);
        }
    }

    #[test]
    fn deferred_subcommands_keep_their_help() {
        let mut seen = 0;
        check(&super::Cli::command(), "viaduct", &mut seen);
        assert!(seen > 80, "only {seen} subcommands were checked");
    }
}
