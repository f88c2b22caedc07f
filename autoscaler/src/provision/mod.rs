//! Provisioners: how a runner for one job comes to exist, and goes.
//!
//! A provisioner gets a [`Launch`] (the job, a one-use registration token
//! bound to it, the runner's name and arguments) and returns an
//! [`Instance`] the scaler polls and, when it outlives its purpose, stops.
//! The token reaches the runner as a file only its instance can read —
//! never a command line or an environment variable.
//!
//! Everything an autoscaler starts carries its identity (its [`Owner`]: the
//! label [`OWNER_LABEL`] on containers, Kubernetes Jobs, pods and Secrets;
//! the instance directories under its state directory for processes), so
//! that the same autoscaler, restarted after a crash or a `kill -9`, finds
//! what it left ([`Provisioner::leftovers`]) — and never what another
//! autoscaler on the same engine or cluster started.
//!
//! - [`process`] — `viaduct-runner` as a child process on this machine.
//! - [`container`] — `viaduct-runner` in a container of an image that has
//!   it, through the Docker Engine API (Docker or Podman).
//! - [`kubernetes`] — `viaduct-runner` in a Kubernetes Job of an image that
//!   has it, the token in a Secret the Job owns.

pub mod container;
pub mod kubernetes;
pub mod process;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// The label on every container, Kubernetes Job, pod and Secret an
/// autoscaler makes; its value is the autoscaler's id ([`Owner::id`]).
pub const OWNER_LABEL: &str = "dev.viaduct.autoscaler.owner";

/// An autoscaler, as the owner of what it starts.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Its id, kept in its state directory (`STATE_DIR/id`): 16 hex digits,
    /// a valid label value.
    pub id: String,
    /// Its state directory: the instances' directories are in it, named
    /// like the instances.
    pub state_dir: PathBuf,
}

/// An instance found by [`Provisioner::leftovers`].
pub struct Leftover {
    /// Its name (that of its directory in the state directory).
    pub name: String,
    /// The job it was started for (empty if it does not say).
    pub job: String,
    /// How long ago it was started, when known.
    pub age: Option<Duration>,
    /// It, to watch and stop like one just started.
    pub instance: Box<dyn Instance>,
}

/// What went wrong starting or watching an instance.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A file or process operation failed.
    #[error("{0}")]
    Io(String),
    /// The container engine refused or failed.
    #[error("container engine: {0}")]
    Engine(String),
    /// The Kubernetes API server refused or could not be reached.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

/// Results of provisioners.
pub type Result<T> = std::result::Result<T, ProvisionError>;

/// One runner to start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The job it is for (`42.1`).
    pub job: String,
    /// Its name (`auto-42-1-…`), unique among instances.
    pub name: String,
    /// The server URL the runner connects to.
    pub server: String,
    /// Runner arguments besides server, token, name and `--ephemeral`
    /// (labels, executors' settings…).
    pub args: Vec<String>,
    /// A 0700 directory for this instance alone, holding `token` (0600):
    /// the job-bound registration token.
    pub dir: PathBuf,
    /// Its seat: a number no other live instance has (`0..max_runners`),
    /// for what instances on one machine must not share (job users).
    pub seat: u32,
    /// The id of the autoscaler starting it ([`Owner::id`]), to label it with.
    pub owner: String,
}

impl Launch {
    /// Where the token file is.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// The runner's arguments, where the instance sees its token file at
    /// `token_file` and keeps its work in `work_dir`.
    pub fn runner_args(&self, token_file: &str, work_dir: &str) -> Vec<String> {
        let mut args: Vec<String> = ["--server", &self.server, "--token-file", token_file, "--ephemeral"]
            .into_iter()
            .chain(["--name", &self.name, "--work-dir", work_dir])
            .map(String::from)
            .collect();
        args.extend(self.args.iter().cloned());
        args
    }
}

/// A started runner.
#[async_trait::async_trait]
pub trait Instance: Send {
    /// Whether it still runs.
    async fn running(&mut self) -> Result<bool>;
    /// Stops it (if it runs) and removes what it left.
    async fn stop(&mut self) -> Result<()>;
}

/// Starts runners.
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    /// What it starts, for the logs.
    fn describe(&self) -> String;
    /// Starts a runner for `launch`.
    async fn start(&self, launch: &Launch) -> Result<Box<dyn Instance>>;
    /// The instances of `owner` that are still there, running or exited
    /// (not yet stopped and removed): after a restart, those a previous
    /// process of the same autoscaler left. Only ever instances labelled
    /// with (or kept under the state directory of) `owner`. The scaler
    /// adopts those it does not track. Default: none (a provisioner that
    /// cannot tell).
    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>> {
        let _ = owner;
        Ok(Vec::new())
    }
}

/// `dir`'s entry `name`, if `name` is one plain file name (not `..`, no
/// `/`): what an instance's name found on an engine or cluster must be to
/// be taken for a directory of the state directory.
pub fn instance_dir(state_dir: &Path, name: &str) -> Option<PathBuf> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(n)), None) if n == name => Some(state_dir.join(name)),
        _ => None,
    }
}

/// Writes `token` to `dir/token`, the directory 0700 and the file 0600.
pub fn write_token(dir: &Path, token: &str) -> Result<PathBuf> {
    use std::{
        io::Write,
        os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    };
    let io = |what: &str, e: std::io::Error| ProvisionError::Io(format!("{what} {}: {e}", dir.display()));
    std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir).map_err(|e| io("cannot create", e))?;
    let file = dir.join("token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(|e| io("cannot write the token in", e))?;
    f.write_all(token.as_bytes()).map_err(|e| io("cannot write the token in", e))?;
    Ok(file)
}
