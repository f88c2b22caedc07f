//! `cargo xtask`: the project's own automation.
//!
//! - `cargo xtask up`    — build and run the whole system locally (server with
//!   an embedded sled data dir + one local runner), until Ctrl-C;
//! - `cargo xtask test`  — install the test tools, build the binaries once,
//!   run every test;
//! - `cargo xtask setup` — install the tools the above need (idempotent)
//!   and prove each works (`--check`: only report);
//! - `cargo xtask bench` — build in release mode and print the benchmarks;
//! - `cargo xtask plugins` — build the WASI step plugins into
//!   `target/plugins/` (first-party) and `target/plugins-test/` (test-only);
//! - `cargo xtask ui` — build the web UI bundle into `target/ui/`;
//! - `cargo xtask dist` — the release archive, systemd units and OCI image
//!   into `target/dist/`.

mod bench;
mod dist;
mod plugins;
mod setup;
mod system;
mod tidy;
mod ui;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Viaduct project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build and run the server, a local runner (and the UI) until Ctrl-C.
    Up {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        /// Start from an empty data directory.
        #[arg(long)]
        fresh: bool,
        /// Slots of the local runner.
        #[arg(long, default_value_t = 2)]
        slots: u32,
    },
    /// Install tools, build the binaries once, and run all tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Install the tools the tests need (idempotent), check that each works
    /// and print what is installed.
    Setup {
        /// Only check and report (version, origin, works?); install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run the benchmarks (release build) and print their figures.
    Bench {
        /// Only benchmarks whose name contains this.
        filter: Option<String>,
        /// Measure the binaries in this directory (e.g. the release build of
        /// an older commit, for before/after figures) instead of building
        /// this tree's.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Build the web UI (wasm32-unknown-unknown, profile `ui`) into
    /// target/ui/.
    Ui,
    /// Build the WASI step plugins (wasm32-wasip2, profile `plugin`) into
    /// target/plugins/ and target/plugins-test/.
    Plugins {
        /// Rebuild even when the components are newer than their sources.
        #[arg(long)]
        force: bool,
    },
    /// Build a release into target/dist/: an archive of the binaries (the
    /// server embedding the UI and the first-party plugins) with systemd
    /// units, SHA256SUMS, and an OCI image built with Podman.
    Dist {
        /// Skip the OCI image.
        #[arg(long)]
        no_image: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up { listen, fresh, slots } => system::up(&listen, fresh, slots),
        Cmd::Test { args } => test(&args),
        Cmd::Setup { check: false } => setup::all().map(|_| ()),
        Cmd::Setup { check: true } => setup::report(),
        Cmd::Bench { filter, bin_dir } => bench::run(filter.as_deref(), bin_dir),
        Cmd::Plugins { force } => plugins::build(force).map(|_| ()),
        Cmd::Ui => ui::build().map(|_| ()),
        Cmd::Dist { no_image } => dist::dist(!no_image),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// cargo's target directory (honours CARGO_TARGET_DIR; a relative one is
/// relative to the workspace root, where [`cargo`] runs cargo).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |dir| root().join(dir))
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The profile `viaduct` (the CLI) is built with for a release and for the
/// benchmarks (`[profile.cli]` in the workspace's Cargo.toml).
pub const CLI_PROFILE: &str = "cli";

/// `cargo` with the workspace as working directory.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn test(extra: &[String]) -> Result<()> {
    let tools = setup::all()?;
    let started = std::time::Instant::now();
    // One build of every binary and plugin, shared by all end-to-end tests:
    // plugins and UI first, so the binaries embed them (as a release does).
    plugins::build(false)?;
    let ui = ui::build()?;
    let embed = dist::embed_env(&ui);
    run(cargo().args(["build", "--bins"]).envs(embed.clone()))?;
    // A private registry for the pull tests, known to Podman as insecure.
    let registry = setup::Registry::start()?;
    let service = setup::PodmanService::start(&tools.podman, Some(&registry.registries_conf))?;
    // Nix for jobs that run as unprivileged slot users.
    let _nix = setup::NixDaemon::start()?;
    // PostgreSQL for the store's tests.
    let postgres = setup::PostgresServer::start()?;
    // An S3-protocol server for the object-storage blob store.
    let s3 = setup::S3Server::start()?;
    let mut cmd = cargo();
    // The same embedding: `cargo test` must not rebuild the binaries without.
    cmd.args(["test", "--workspace", "--no-fail-fast"]).args(extra).envs(embed);
    for (k, v) in tools.env() {
        cmd.env(k, v);
    }
    cmd.env("VIADUCT_CONTAINER_SOCKET", &service.socket).env("VIADUCT_TEST_IMAGE", setup::TEST_IMAGE);
    // The tests' own podman commands behave like the service.
    cmd.env("CONTAINERS_CONF", &tools.podman);
    cmd.env("VIADUCT_TEST_REGISTRY", &registry.addr).env("VIADUCT_TEST_REGISTRY_AUTH", &registry.auth);
    cmd.env("VIADUCT_BIN_DIR", target_dir().join("debug")).env("VIADUCT_UI_DIR", ui);
    cmd.env("VIADUCT_TEST_POSTGRES", &postgres.url)
        .env("VIADUCT_TEST_POSTGRES_TLS", &postgres.tls_url)
        .env("VIADUCT_TEST_POSTGRES_CA", &postgres.ca_file);
    cmd.env("VIADUCT_TEST_S3", &s3.endpoint)
        .env("VIADUCT_TEST_S3_ROOT", &s3.root)
        .env("VIADUCT_TEST_S3_ACCESS_KEY", &s3.access_key)
        .env("VIADUCT_TEST_S3_SECRET_KEY", &s3.secret_key);
    run(&mut cmd)?;
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}
