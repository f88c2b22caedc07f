//! The container executor: a job's steps run inside a container of the
//! job's `image:`, through the Docker Engine API (Docker, or Podman's
//! compatible service) with bollard.
//!
//! # One container per job, steps without `exec`
//! Starting a container costs hundreds of milliseconds and `docker exec`
//! hundreds more per step, so a job gets one container whose main process
//! is a small POSIX-shell launcher (`launcher.sh`, under an init process).
//! The runner bind-mounts the job's workspace at `/workspace` and a control
//! directory at `/.viaduct`, and hands each step over through FIFOs there:
//! it writes the step's script and environment, sends its number, reads its
//! output live from a FIFO and its exit status from another, and stops it
//! by writing a signal name to a third — the launcher signals the step's
//! whole process group. A step thus costs a shell fork in the container,
//! not an API round trip.
//!
//! Sidecar `services:` run in their own containers on a per-job network,
//! reachable from the steps by name. Everything is labelled with the
//! runner's id and removed at job end, whatever happened; a restarted
//! runner removes what its previous process left.
//!
//! A debug shell is the one thing that does go through `exec`: a terminal
//! in the job's container (see the `shell` module).
//!
//! # What the container can touch
//! The job's code is untrusted, and the runner must never read or write
//! on the host where the container tells it to. The control directory is
//! mounted **read-only** (the runner creates everything in it before the
//! step starts: the container cannot plant a symbolic link or a FIFO where
//! the runner writes); the FIFOs in it stay writable, as FIFOs on a
//! read-only mount are. The one thing a step writes for the runner to read
//! back — its outputs — is in a separate directory (`/.viaduct-out`), read
//! with `O_NOFOLLOW | O_NONBLOCK`, only if it is a regular file, and only up
//! to [`outputs::MAX_OUTPUTS_BYTES`] (see [`outputs::read`]), off the async
//! workers; a status line longer
//! than a number is an error. After each step the launcher kills every
//! process of the step — also those that left its process group — so
//! nothing in the container changes the workspace while the runner reads
//! it (artifacts, caches). The job directory is 0700: other users of the
//! runner machine cannot reach the workspace or the control files.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bollard::{
    ClientVersion, Docker,
    auth::DockerCredentials,
    models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
        ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptions,
    },
};
use nix::{sys::stat::Mode, unistd::mkfifo};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::unix::pipe,
    sync::watch,
};
use tokio_stream::StreamExt;
use viaduct_proto::v1::{ImagePlan, Status};

use super::{Backend, JobEnv, JobSetup, SetupError, Shell, ShellSpec, StepLog, StepOutcome, StepSpec, StepStop};
use crate::outputs;

const LAUNCHER: &str = include_str!("launcher.sh");

mod programs;
mod shell;
/// The API version Docker and Podman 4 both speak.
const API: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };
/// Longest status line read from the launcher.
const MAX_STATUS_LINE: u64 = 32;
/// Label keys.
const RUNNER_LABEL: &str = "viaduct.runner";
const JOB_LABEL: &str = "viaduct.job";

/// How to reach the container engine and what to give containers.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Unix socket of the engine (None: $DOCKER_HOST, /var/run/docker.sock,
    /// then Podman's sockets).
    pub socket: Option<String>,
    /// Default CPU limit (0 = none) when a job sets none.
    pub cpus: f64,
    /// Default memory limit in bytes (0 = none) when a job sets none.
    pub memory: u64,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    /// Keep job directories (debugging).
    pub keep: bool,
}

/// Runs container jobs on one engine.
pub struct ContainerBackend {
    docker: Docker,
    root: PathBuf,
    runner: String,
    cfg: ContainerConfig,
    /// "podman 4.3.1" or "docker 27.0".
    pub engine: String,
}

fn socket_candidates(explicit: Option<&str>) -> Vec<String> {
    if let Some(s) = explicit {
        return vec![s.trim_start_matches("unix://").to_string()];
    }
    let mut out = Vec::new();
    if let Ok(h) = std::env::var("DOCKER_HOST")
        && let Some(p) = h.strip_prefix("unix://")
    {
        out.push(p.to_string());
    }
    out.push("/var/run/docker.sock".into());
    out.push("/run/podman/podman.sock".into());
    if let Ok(x) = std::env::var("XDG_RUNTIME_DIR") {
        out.push(format!("{x}/podman/podman.sock"));
    }
    out
}

fn engine_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            format!("{message} (HTTP {status_code})")
        }
        other => other.to_string(),
    }
}

impl ContainerBackend {
    /// Connects to the engine (see [`ContainerConfig::socket`]); job
    /// directories go under `root/containers`.
    pub async fn connect(root: &Path, runner: &str, cfg: ContainerConfig) -> Result<Self, String> {
        let mut tried = Vec::new();
        for path in socket_candidates(cfg.socket.as_deref()) {
            if !Path::new(&path).exists() {
                tried.push(format!("{path} (missing)"));
                continue;
            }
            let docker = match Docker::connect_with_unix(&path, 300, &API) {
                Ok(d) => d,
                Err(e) => {
                    tried.push(format!("{path} ({e})"));
                    continue;
                }
            };
            match docker.version().await {
                Ok(v) => {
                    let name = v
                        .components
                        .as_ref()
                        .and_then(|c| c.first())
                        .map(|c| c.name.to_lowercase())
                        .filter(|n| n.contains("podman"))
                        .unwrap_or_else(|| "docker".into());
                    let engine = format!(
                        "{} {} at {path}",
                        name.split_whitespace().next().unwrap_or("engine"),
                        v.version.unwrap_or_default()
                    );
                    return Ok(Self { docker, root: root.join("containers"), runner: runner.to_string(), cfg, engine });
                }
                Err(e) => tried.push(format!("{path} ({})", engine_error(&e))),
            }
        }
        Err(format!("no container engine answered: tried {}", tried.join(", ")))
    }

    fn labels(&self, job: &str) -> HashMap<String, String> {
        HashMap::from([(RUNNER_LABEL.to_string(), self.runner.clone()), (JOB_LABEL.to_string(), job.to_string())])
    }

    /// Removes the containers and networks a previous process of this runner
    /// left (it is gone, so nothing labelled with this runner is in use).
    pub async fn clean_stale(&self) {
        let filter = HashMap::from([("label".to_string(), vec![format!("{RUNNER_LABEL}={}", self.runner)])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filter).build();
        if let Ok(list) = self.docker.list_containers(Some(opts)).await {
            for c in list {
                let Some(id) = c.id else { continue };
                tracing::warn!(container = %id, "removing a container left by a previous runner process");
                let _ = remove_container(&self.docker, &id).await;
            }
        }
        let opts = ListNetworksOptionsBuilder::default().filters(&filter).build();
        if let Ok(list) = self.docker.list_networks(Some(opts)).await {
            for n in list {
                if let Some(name) = n.name {
                    let _ = self.docker.remove_network(&name).await;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// Makes sure `image` is present according to its pull policy.
    async fn ensure_image(&self, image: &ImagePlan, auth: &str) -> Result<(), String> {
        let present = self.docker.inspect_image(&image.name).await.is_ok();
        let pull = match image.pull.as_str() {
            "never" if !present => {
                return Err(format!(
                    "image `{}` is not present on this runner, and `pull: never` forbids pulling it",
                    image.name
                ));
            }
            "never" => false,
            "always" => true,
            _ => !present,
        };
        if !pull {
            return Ok(());
        }
        let creds = auth.split_once(':').map(|(u, p)| DockerCredentials {
            username: Some(u.to_string()),
            password: Some(p.to_string()),
            ..Default::default()
        });
        let (from, tag) = split_tag(&image.name);
        let opts = CreateImageOptionsBuilder::default().from_image(from).tag(tag).build();
        let mut stream = self.docker.create_image(Some(opts), None, creds);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(format!("cannot pull image `{}`: {}", image.name, engine_error(&e)));
            }
        }
        Ok(())
    }
}

/// `name:tag` → (name, tag), minding registry ports (`host:5000/app`).
fn split_tag(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) if !image.contains('@') => (&image[..slash + i], &image[slash + i + 1..]),
        _ => (image, if image.contains('@') { "" } else { "latest" }),
    }
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn fifo(path: &Path) -> Result<(), String> {
    mkfifo(path, Mode::from_bits_truncate(0o666)).map_err(|e| format!("cannot make FIFO {}: {e}", path.display()))?;
    chmod(path, 0o666).map_err(|e| e.to_string())
}

/// `KEY='value'` lines for `sh`'s `.` (invalid names are left out).
fn env_file(env: &BTreeMap<String, String>) -> String {
    let valid = |k: &str| {
        k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    env.iter().filter(|(k, _)| valid(k)).map(|(k, v)| format!("{k}='{}'\n", v.replace('\'', r"'\''"))).collect()
}

/// The names a job's containers and network get.
fn names(runner: &str, job: &JobSetup) -> (String, String) {
    let base = format!("viaduct-{runner}-{}-a{}", job.job.job_id, job.job.attempt);
    (base.clone(), format!("{base}-net"))
}

#[async_trait::async_trait]
impl Backend for ContainerBackend {
    fn executors(&self) -> Vec<viaduct_proto::v1::Executor> {
        vec![viaduct_proto::v1::Executor::Container]
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
        let image = job
            .image
            .clone()
            .filter(|i| !i.name.is_empty())
            .ok_or_else(|| SetupError("a container job needs an image".into()))?;
        let (name, net) = names(&self.runner, job);
        let dir = self.root.join(format!("{}-a{}", job.job.job_id, job.job.attempt));
        let io = |e: std::io::Error| SetupError(format!("cannot prepare {}: {e}", dir.display()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["workspace", "ctl/steps", "outputs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        // The container's user may not be root: it must write these (the
        // container reaches them through its mounts, not through `dir`)…
        for sub in ["workspace", "outputs"] {
            chmod(&dir.join(sub), 0o777).map_err(io)?;
        }
        // …and read these (mounted read-only).
        for sub in ["ctl", "ctl/steps"] {
            chmod(&dir.join(sub), 0o755).map_err(io)?;
        }
        // Nobody else on the runner machine reaches any of it.
        chmod(&dir, 0o700).map_err(io)?;
        std::fs::write(dir.join("ctl/launcher.sh"), LAUNCHER).map_err(io)?;
        fifo(&dir.join("ctl/requests")).map_err(SetupError)?;
        let mut env = ContainerJob {
            docker: self.docker.clone(),
            dir: dir.clone(),
            name: name.clone(),
            services: Vec::new(),
            network: None,
            launcher: Launcher::default(),
            exited: watch::channel(None).1,
            drains: Vec::new(),
            kill_grace: self.cfg.kill_grace,
            keep: self.cfg.keep,
        };
        if let Err(e) = self.start(job, &image, &name, &net, &dir, &mut env).await {
            Box::new(env).teardown().await;
            return Err(SetupError(e));
        }
        Ok(Box::new(env))
    }
}

impl ContainerBackend {
    /// The options of a bind mount (`mode`: "ro" or ""), as the engine
    /// takes them: Podman also makes them `nosuid,nodev` (Docker's bind
    /// syntax has no such options; its job directories are 0700 anyway).
    fn bind_options(&self, mode: &str) -> String {
        let mut opts: Vec<&str> = Vec::new();
        if !mode.is_empty() {
            opts.push(mode);
        }
        if self.engine.starts_with("podman") {
            opts.extend(["nosuid", "nodev"]);
        }
        if opts.is_empty() { String::new() } else { format!(":{}", opts.join(",")) }
    }

    async fn start(
        &self,
        job: &JobSetup,
        image: &ImagePlan,
        name: &str,
        net: &str,
        dir: &Path,
        env: &mut ContainerJob,
    ) -> Result<(), String> {
        let labels = self.labels(&job.job.job_id);
        self.ensure_image(image, &job.registry_auth).await?;
        for s in &job.services {
            let si = s.image.clone().unwrap_or_default();
            self.ensure_image(&si, &job.registry_auth).await?;
        }
        let none = job.network == "none";
        if !job.services.is_empty() && none {
            return Err("services need a network, but the job has `network: none`".into());
        }
        let network_mode = if none {
            "none".to_string()
        } else if job.services.is_empty() {
            "bridge".to_string()
        } else {
            let req =
                NetworkCreateRequest { name: net.to_string(), labels: Some(labels.clone()), ..Default::default() };
            self.docker
                .create_network(req)
                .await
                .map_err(|e| format!("cannot create the job network: {}", engine_error(&e)))?;
            env.network = Some(net.to_string());
            net.to_string()
        };
        for s in &job.services {
            let sname = format!("{name}-svc-{}", s.name);
            let si = s.image.clone().unwrap_or_default();
            let body = ContainerCreateBody {
                image: Some(si.name.clone()),
                cmd: (!s.command.is_empty()).then(|| s.command.clone()),
                env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                user: (!si.user.is_empty()).then(|| si.user.clone()),
                labels: Some(labels.clone()),
                host_config: Some(HostConfig {
                    network_mode: Some(network_mode.clone()),
                    init: Some(true),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        network_mode.clone(),
                        EndpointSettings { aliases: Some(vec![s.name.clone()]), ..Default::default() },
                    )])),
                }),
                ..Default::default()
            };
            let opts = CreateContainerOptionsBuilder::default().name(&sname).build();
            self.docker
                .create_container(Some(opts), body)
                .await
                .map_err(|e| format!("cannot create service `{}`: {}", s.name, engine_error(&e)))?;
            env.services.push(sname.clone());
            self.docker
                .start_container(&sname, None)
                .await
                .map_err(|e| format!("cannot start service `{}`: {}", s.name, engine_error(&e)))?;
        }
        let cpus = if job.cpus > 0.0 { job.cpus } else { self.cfg.cpus };
        let memory = if job.memory_bytes > 0 { job.memory_bytes } else { self.cfg.memory };
        let body = ContainerCreateBody {
            image: Some(image.name.clone()),
            entrypoint: Some(vec!["/bin/sh".into(), "/.viaduct/launcher.sh".into()]),
            cmd: Some(Vec::new()),
            working_dir: Some("/workspace".into()),
            user: (!image.user.is_empty()).then(|| image.user.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{}:/workspace{}", dir.join("workspace").display(), self.bind_options("")),
                    format!("{}:/.viaduct{}", dir.join("ctl").display(), self.bind_options("ro")),
                    format!("{}:/.viaduct-out{}", dir.join("outputs").display(), self.bind_options("")),
                ]),
                init: Some(true),
                network_mode: Some(network_mode),
                nano_cpus: (cpus > 0.0).then_some((cpus * 1e9) as i64),
                memory: (memory > 0).then(|| i64::try_from(memory).unwrap_or(i64::MAX)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| format!("cannot create the job container from `{}`: {}", image.name, engine_error(&e)))?;
        // Hold the request FIFO open read-write: writes never block and the
        // launcher never sees end-of-file.
        *env.launcher.lock().await = Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(dir.join("ctl/requests"))
                .map_err(|e| format!("request FIFO: {e}"))?,
        );
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| format!("cannot start the job container: {}", engine_error(&e)))?;
        let (tx, rx) = watch::channel(None);
        env.exited = rx;
        let (docker, cname) = (self.docker.clone(), name.to_string());
        tokio::spawn(async move {
            let mut waits = docker.wait_container(&cname, None::<WaitContainerOptions>);
            let why = match waits.next().await {
                Some(Ok(r)) => format!("the job container exited with status {}", r.status_code),
                Some(Err(e)) => format!("the job container stopped: {}", engine_error(&e)),
                None => "the job container stopped".to_string(),
            };
            let _ = tx.send(Some(why));
        });
        Ok(())
    }
}

/// The request FIFO of the job container's launcher (shared by the job's
/// steps and the programs of its plugin steps; `None` once it exited).
type Launcher = std::sync::Arc<tokio::sync::Mutex<Option<pipe::Sender>>>;

/// Asks the launcher to run what `ctl/steps/<name>` holds.
async fn request(launcher: &Launcher, name: &str) -> Result<(), String> {
    let mut guard = launcher.lock().await;
    let requests = guard.as_mut().ok_or("the job container is not running")?;
    requests.write_all(format!("{name}\n").as_bytes()).await.map_err(|e| format!("cannot reach the launcher: {e}"))
}

struct ContainerJob {
    docker: Docker,
    dir: PathBuf,
    name: String,
    services: Vec<String>,
    network: Option<String>,
    launcher: Launcher,
    exited: watch::Receiver<Option<String>>,
    /// Tasks emptying status FIFOs a step flooded (until the job ends).
    drains: Vec<tokio::task::JoinHandle<()>>,
    kill_grace: Duration,
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopping {
    Cancelled,
    TimedOut,
}

#[async_trait::async_trait]
impl JobEnv for ContainerJob {
    fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    fn programs(&self) -> std::sync::Arc<dyn super::programs::Programs> {
        std::sync::Arc::new(programs::ContainerPrograms {
            ctl: self.dir.join("ctl"),
            launcher: std::sync::Arc::clone(&self.launcher),
            next: std::sync::atomic::AtomicU32::new(0),
        })
    }

    async fn run_step(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
        match self.run(step, log, stop).await {
            Ok(o) => o,
            Err(e) => StepOutcome::error(e),
        }
    }

    async fn shell(&mut self, spec: &ShellSpec) -> Result<Shell, String> {
        if let Some(why) = self.exited.borrow().clone() {
            return Err(why);
        }
        shell::start(&self.docker, &self.name, spec, self.kill_grace).await
    }

    async fn teardown(self: Box<Self>) {
        for d in &self.drains {
            d.abort();
        }
        if let Some(mut r) = self.launcher.lock().await.take() {
            let _ = r.write_all(b"exit\n").await;
        }
        for c in std::iter::once(&self.name).chain(self.services.iter()) {
            if let Err(e) = remove_container(&self.docker, c).await {
                tracing::warn!(container = %c, error = %engine_error(&e), "could not remove a container");
            }
        }
        if let Some(net) = &self.network
            && let Err(e) = self.docker.remove_network(net).await
        {
            tracing::warn!(network = %net, error = %engine_error(&e), "could not remove the job network");
        }
        if !self.keep {
            let _ = tokio::fs::remove_dir_all(&self.dir).await;
        }
    }
}

/// Force-removes container `name` (gone already counts as removed). The
/// job container stops by itself once told to exit, and Podman refuses a
/// forced removal that races with that ("could not be stopped … container
/// state improper"): a failure is retried a few times, with backoff.
async fn remove_container(docker: &Docker, name: &str) -> Result<(), bollard::errors::Error> {
    let mut delay = std::time::Duration::from_millis(50);
    let mut retries = 4;
    loop {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match docker.remove_container(name, Some(opts)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(()),
            Err(e) if retries > 0 => {
                tracing::debug!(container = %name, error = %engine_error(&e), "container removal failed: retrying");
                retries -= 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

impl ContainerJob {
    async fn run(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> Result<StepOutcome, String> {
        let n = step.index;
        let d = self.dir.join("ctl/steps").join(n.to_string());
        let output = self.dir.join("outputs").join(n.to_string());
        let mut env = step.env.clone();
        env.insert("VIADUCT_WORKSPACE".into(), "/workspace".into());
        env.insert("VIADUCT_OUTPUT".into(), format!("/.viaduct-out/{n}"));
        let cwd = if step.working_directory.is_empty() {
            "/workspace".to_string()
        } else {
            format!("/workspace/{}", step.working_directory)
        };
        let files = [("script", step.script.clone()), ("env", env_file(&env)), ("cwd", cwd)];
        let (dir, out_file) = (d.clone(), output.clone());
        // The control directory is read-only to the container: nothing in
        // it can have been planted. Plain files, off the async workers.
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let io = |e: std::io::Error| format!("cannot hand the step over: {e}");
            let _ = std::fs::remove_file(&out_file);
            std::fs::create_dir(&dir).map_err(io)?;
            chmod(&dir, 0o755).map_err(io)?;
            for (name, content) in &files {
                std::fs::write(dir.join(name), content).map_err(io)?;
                chmod(&dir.join(name), 0o644).map_err(io)?;
            }
            for f in ["out", "done", "signal"] {
                fifo(&dir.join(f))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("cannot hand the step over: {e}"))??;
        // All held open read-write by us: no open blocks, no early EOF.
        let open_rx = |f: &str| {
            pipe::OpenOptions::new().read_write(true).open_receiver(d.join(f)).map_err(|e| format!("{f} FIFO: {e}"))
        };
        let mut out = open_rx("out")?;
        // A status is a number: a longer line is garbage, not memory.
        let mut done = BufReader::new(open_rx("done")?).take(MAX_STATUS_LINE);
        let mut signal = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(d.join("signal"))
            .map_err(|e| format!("signal FIFO: {e}"))?;
        request(&self.launcher, &n.to_string()).await?;

        let mut buf = vec![0u8; 64 * 1024];
        let mut line = String::new();
        let mut stopping: Option<Stopping> = None;
        let mut kill_at: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let code = loop {
            tokio::select! {
                read = out.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {}
                    Ok(k) => log.write(&buf[..k]).await,
                },
                r = done.read_line(&mut line) => {
                    r.map_err(|e| format!("reading the step's status: {e}"))?;
                    break line.trim().parse::<i32>().ok();
                }
                changed = self.exited.changed() => {
                    if changed.is_ok()
                        && let Some(why) = self.exited.borrow().clone() {
                            return Ok(StepOutcome::error(why));
                        }
                }
                () = stop.cancel.cancelled(), if stopping.is_none() => {
                    stopping = Some(Stopping::Cancelled);
                    let _ = signal.write_all(b"TERM\n").await;
                    kill_at = Some(Instant::now() + self.kill_grace);
                }
                () = tokio::time::sleep_until(stop.deadline.unwrap_or(far).into()), if stopping.is_none() && stop.deadline.is_some() => {
                    stopping = Some(Stopping::TimedOut);
                    let _ = signal.write_all(b"TERM\n").await;
                    kill_at = Some(Instant::now() + self.kill_grace);
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or(far).into()), if kill_at.is_some() => {
                    let _ = signal.write_all(b"KILL\n").await;
                    kill_at = None;
                }
            }
        };
        // The step has exited: what it wrote is already in the FIFO.
        loop {
            match out.try_read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => log.write(&buf[..k]).await,
            }
        }
        let mut outcome = match (stopping, code) {
            (Some(Stopping::Cancelled), c) => StepOutcome {
                status: Status::Cancelled,
                exit_code: c,
                message: "cancelled".into(),
                outputs: BTreeMap::new(),
            },
            (Some(Stopping::TimedOut), c) => StepOutcome {
                status: Status::TimedOut,
                exit_code: c,
                message: "timed out".into(),
                outputs: BTreeMap::new(),
            },
            (None, Some(0)) => StepOutcome {
                status: Status::Success,
                exit_code: Some(0),
                message: String::new(),
                outputs: BTreeMap::new(),
            },
            (None, Some(c)) => StepOutcome {
                status: Status::Failure,
                exit_code: Some(c),
                message: format!("exited with code {c}"),
                outputs: BTreeMap::new(),
            },
            (None, None) => {
                // Not the launcher's answer: make sure the step is gone
                // before the next one starts, and keep emptying the FIFO it
                // flooded, so the launcher's own status line (written
                // after the flood) never blocks it.
                let _ = signal.write_all(b"KILL\n").await;
                let mut flooded = done.into_inner();
                self.drains.push(tokio::spawn(async move {
                    let mut sink = vec![0u8; 64 * 1024];
                    while flooded.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                }));
                StepOutcome::error(format!(
                    "the step's status is not an exit code (`{}`): something in the container wrote to the launcher's FIFO",
                    line.trim().escape_debug()
                ))
            }
        };
        let read = tokio::task::spawn_blocking(move || outputs::read(&output)).await;
        match read.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(None) => {}
            Ok(Some(text)) => match outputs::parse(&text) {
                Ok(o) => outcome.outputs = o,
                Err(e) if outcome.status == Status::Success => {
                    outcome = StepOutcome::error(format!("invalid $VIADUCT_OUTPUT: {e}"))
                }
                Err(_) => {}
            },
            Err(e) => outcome = StepOutcome::error(e),
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&d);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_and_env_files() {
        assert_eq!(split_tag("rust:1-bookworm"), ("rust", "1-bookworm"));
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(split_tag("reg.local:5000/team/app"), ("reg.local:5000/team/app", "latest"));
        assert_eq!(split_tag("reg.local:5000/team/app:v2"), ("reg.local:5000/team/app", "v2"));
        let env = BTreeMap::from([("A".to_string(), "it's".to_string()), ("bad-name".to_string(), "x".to_string())]);
        assert_eq!(env_file(&env), "A='it'\\''s'\n");
    }
}
