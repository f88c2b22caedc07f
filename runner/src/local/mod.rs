//! `viaduct-runner exec`: a pipeline run on this machine, without a server.
//!
//! The file is parsed and planned as the server plans it, each planned job
//! becomes the [`JobAssignment`](viaduct_proto::v1::JobAssignment) a server
//! would send ([`assignment`]), and the jobs run through the runner's own
//! job runner ([`crate::job::run`]) and executors (host; container when a
//! job has an image and an engine answers), in `needs` order, reporting to
//! the terminal ([`terminal`]). What differs from a server run:
//!
//! - each job's workspace is a copy of the directory ([`workspace`]), not a
//!   checkout of a commit;
//! - `uses:` resolves against local plugins ([`plugins`]): `--plugins-dir`
//!   or the set embedded at build time;
//! - secrets come from the caller's environment (`--secret NAME`) or a file;
//! - no caches or artifact uploads (there is no server): `artifacts:` are
//!   copied to `--artifacts-dir`, and plugin calls that need the server
//!   fail with "not available in a local run";
//! - jobs run as the invoking user (no per-slot users, even as root).
//!
//! Exit status: 0 when every job succeeded or was skipped (or failed with
//! `continue_on_error`), 1 otherwise, 2 for invalid input.

pub mod assignment;
pub mod plugins;
pub mod terminal;
pub mod workspace;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use tokio::task::JoinSet;
use viaduct_proto::{
    StatusWord,
    v1::{Status, step_plan::Action},
};

use self::{
    assignment::{LocalJob, RunFacts},
    plugins::Catalog,
    terminal::Terminal,
};
use crate::{
    environment::RunnerEnv,
    job::{JobStop, Services},
    plugin_host::{ComponentSource, PluginConfig, PluginHost},
};

/// The largest pipeline file (the server's limit).
const MAX_PIPELINE_BYTES: u64 = 1024 * 1024;

/// Variables a local run's host jobs inherit by default (when set): where
/// the usual toolchains are found.
pub const DEFAULT_INHERIT: [&str; 9] =
    ["PATH", "RUSTUP_HOME", "CARGO_HOME", "GOPATH", "GOROOT", "JAVA_HOME", "NVM_DIR", "PYENV_ROOT", "LANG"];

/// Options of `viaduct-runner exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The pipeline file.
    #[arg(default_value = ".viaduct/pipeline.yml")]
    pub file: PathBuf,
    /// Run only the job with this key (every matrix expansion of it), not
    /// the jobs it needs.
    #[arg(long)]
    pub job: Option<String>,
    /// The directory each job's workspace is a copy of (default: the
    /// current one). In a git work tree: the files git lists, without
    /// ignored ones.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Jobs to run at once (jobs that do not need one another).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// A variable every job gets, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A file of KEY=VALUE lines every job gets; repeatable, under --env.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Variables of this environment host jobs get, by name,
    /// comma-separated. Default: PATH, RUSTUP_HOME, CARGO_HOME, GOPATH,
    /// GOROOT, JAVA_HOME, NVM_DIR, PYENV_ROOT and LANG, those that are set.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...", conflicts_with = "clean_env")]
    pub inherit_env: Option<Vec<String>>,
    /// Inherit no variable (jobs get only --env, --env-file and the
    /// pipeline's).
    #[arg(long)]
    pub clean_env: bool,
    /// A secret jobs may list, its value taken from this environment's
    /// variable NAME (never from the command line); repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// A file of NAME=VALUE secret lines (`#` comments).
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
    /// A value of `${{ inputs.NAME }}`, as NAME=VALUE; repeatable.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// The event the run is for (`${{ event }}`, VIADUCT_EVENT).
    #[arg(long, default_value = "manual")]
    pub event: String,
    /// Plugins for `uses:` (`<name>.toml` and `<name>.wasm`, as `cargo
    /// xtask plugins` writes to target/plugins). Default: those embedded in
    /// this binary.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Copy each job's `artifacts:` here, under the job's id.
    #[arg(long, value_name = "DIR")]
    pub artifacts_dir: Option<PathBuf>,
    /// Unix socket of the Docker Engine API for jobs with an image (Docker
    /// or `podman system service`). Default: $DOCKER_HOST,
    /// /var/run/docker.sock, then Podman's sockets.
    #[arg(long)]
    pub container_socket: Option<String>,
    /// Do not look for a container engine (jobs with an image fail).
    #[arg(long, conflicts_with = "container_socket")]
    pub no_containers: bool,
    /// Keep the run's directory (workspaces, job homes) and print where.
    #[arg(long)]
    pub keep: bool,
    /// Time between SIGTERM and SIGKILL when stopping a step.
    #[arg(long, default_value = "5s", value_parser = viaduct_pipeline::duration::parse_duration)]
    pub kill_grace: Duration,
}

/// How `exec` stops early: the message and the exit status.
struct Stop(String, u8);

fn usage(message: impl Into<String>) -> Stop {
    Stop(message.into(), 2)
}

/// Runs `viaduct-runner exec`.
pub fn main(args: ExecArgs) -> ExitCode {
    match exec(args) {
        Ok(code) => ExitCode::from(code),
        Err(Stop(message, code)) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}

/// Everything a run needs, from the options and the file.
struct Prepared {
    jobs: Vec<LocalJob>,
    catalog: Catalog,
    given: BTreeMap<String, String>,
    env: RunnerEnv,
    snapshot: workspace::Snapshot,
    run_id: String,
}

fn exec(args: ExecArgs) -> Result<u8, Stop> {
    let prepared = prepare(&args)?;
    let dir = run_dir(&prepared.run_id)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Stop(format!("viaduct-runner exec: cannot start the async runtime: {e}"), 1))?;
    let code = runtime.block_on(run(&args, prepared, &dir));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if args.keep {
        eprintln!("── the run's directory is kept: {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("viaduct-runner exec: cannot remove {}: {e}", dir.display());
    }
    Ok(code)
}

fn prepare(args: &ExecArgs) -> Result<Prepared, Stop> {
    let name = args.file.display().to_string();
    let size = std::fs::metadata(&args.file).map_err(|e| usage(format!("viaduct-runner exec: {name}: {e}")))?.len();
    if size > MAX_PIPELINE_BYTES {
        return Err(usage(format!("{name} is {size} bytes, over the limit of {MAX_PIPELINE_BYTES}")));
    }
    let yaml = std::fs::read_to_string(&args.file).map_err(|e| usage(format!("viaduct-runner exec: {name}: {e}")))?;
    let pipeline = viaduct_pipeline::parse(&name, &yaml).map_err(invalid)?;
    let catalog = match &args.plugins_dir {
        Some(dir) => Catalog::from_dir(dir).map_err(|e| usage(format!("viaduct-runner exec: {e}")))?,
        None => embedded_plugins()?,
    };
    let problems = catalog.check(&pipeline);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => {
            std::env::current_dir().map_err(|e| usage(format!("viaduct-runner exec: no current directory: {e}")))?
        }
    };
    let snapshot = workspace::Snapshot::of(&workdir).map_err(|e| usage(format!("viaduct-runner exec: {e}")))?;
    let mut inputs = HashMap::new();
    for pair in &args.inputs {
        let (k, v) = pair.split_once('=').ok_or_else(|| usage(format!("--input `{pair}`: expected NAME=VALUE")))?;
        inputs.insert(k.to_string(), v.to_string());
    }
    let run_id = format!("local-{}", hex::encode(random_bytes()));
    let facts = facts(&snapshot.root, run_id.clone(), &args.event, inputs);
    let ctx = viaduct_pipeline::plan::PlanContext {
        event: facts.event.clone(),
        branch: (!facts.branch.is_empty()).then(|| facts.branch.clone()),
        tag: None,
        commit: (!facts.commit.is_empty()).then(|| facts.commit.clone()),
        repo: Some(facts.repo.clone()),
        inputs: facts.inputs.clone().into_iter().collect(),
    };
    let plan = viaduct_pipeline::plan::plan(&pipeline, &ctx).map_err(invalid)?;
    let mut jobs = assignment::jobs(&plan, &catalog, &facts);
    if let Some(only) = &args.job {
        if !jobs.iter().any(|j| &j.key == only) {
            let mut keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
            keys.dedup();
            return Err(usage(format!("viaduct-runner exec: {name} has no job `{only}` (jobs: {})", keys.join(", "))));
        }
        jobs.retain(|j| &j.key == only);
        for j in &mut jobs {
            j.needs.clear();
        }
    }
    let given = secrets(args)?;
    let inherit: Vec<String> = match (&args.inherit_env, args.clean_env) {
        (_, true) => Vec::new(),
        (Some(names), false) => names.clone(),
        (None, false) => {
            DEFAULT_INHERIT.iter().filter(|n| std::env::var_os(n).is_some()).map(|n| n.to_string()).collect()
        }
    };
    let env = RunnerEnv::build(&args.env, &args.env_files, &inherit, |n| std::env::var(n).ok())
        .map_err(|e| usage(format!("viaduct-runner exec: {e}")))?;
    Ok(Prepared { jobs, catalog, given, env, snapshot, run_id })
}

/// A pipeline's problems, one `file:line:column: message` a line.
fn invalid(diags: Vec<viaduct_pipeline::Diagnostic>) -> Stop {
    Stop(diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"), 2)
}

/// The plugins embedded in this binary at build time.
fn embedded_plugins() -> Result<Catalog, Stop> {
    let files = viaduct_bundle::plugins();
    if files.is_empty() {
        return Ok(Catalog::empty("no plugins are embedded in this build"));
    }
    Catalog::from_files(files.iter().map(|f| (f.path, f.bytes)), "the plugins embedded in this build".into())
        .map_err(|e| usage(format!("viaduct-runner exec: {e}")))
}

/// The secrets given: `--secrets-file`, then `--secret` names from the
/// environment.
fn secrets(args: &ExecArgs) -> Result<BTreeMap<String, String>, Stop> {
    let mut given = BTreeMap::new();
    if let Some(file) = &args.secrets_file {
        // The env-file format and checks (names, line numbers in errors).
        let parsed = RunnerEnv::build(&[], std::slice::from_ref(file), &[], |_| None)
            .map_err(|e| usage(format!("viaduct-runner exec: {}", e.replacen("--env-file", "--secrets-file", 1))))?;
        given.extend(parsed.for_job(true));
    }
    for name in &args.secrets {
        if name.contains('=') {
            return Err(usage(format!(
                "viaduct-runner exec: --secret takes a NAME, not a value (command lines are readable by every user \
                 of this machine): set {0} in the environment and pass --secret {0}",
                name.split('=').next().unwrap_or_default()
            )));
        }
        let value = std::env::var(name).map_err(|_| {
            usage(format!("viaduct-runner exec: --secret {name}: the variable {name} is not set in this environment"))
        })?;
        given.insert(name.clone(), value);
    }
    Ok(given)
}

/// What the run is about: the directory's name, and its branch and commit
/// when it is a git work tree.
fn facts(root: &Path, run_id: String, event: &str, inputs: HashMap<String, String>) -> RunFacts {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let branch = git(&["symbolic-ref", "--short", "-q", "HEAD"]);
    let commit = git(&["rev-parse", "-q", "--verify", "HEAD"]);
    let repo = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    RunFacts { run_id, event: event.to_string(), branch, commit, repo, inputs }
}

fn random_bytes() -> [u8; 4] {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    r
}

/// The run's private directory (workspaces, job homes, plugin mounts).
fn run_dir(run_id: &str) -> Result<PathBuf, Stop> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("viaduct-{run_id}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Stop(format!("viaduct-runner exec: cannot create {}: {e}", dir.display()), 1))?;
    std::fs::canonicalize(&dir).map_err(|e| Stop(format!("viaduct-runner exec: {}: {e}", dir.display()), 1))
}

/// Where compiled plugins are kept between runs (they take seconds to
/// compile): the user's cache directory, else the run's.
fn plugin_cache(run_dir: &Path) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(b)
            if std::fs::create_dir_all(b.join("viaduct/plugins")).is_ok() && only_mine(&b.join("viaduct/plugins")) =>
        {
            b.join("viaduct/plugins")
        }
        _ => run_dir.join("plugins"),
    }
}

/// Whether `dir` and every directory above it can be changed by this user
/// (or root) alone: compiled plugins are native code, loaded as they are
/// (`sudo -E viaduct exec` must not load what the user left in their cache).
fn only_mine(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    dir.ancestors().all(|p| {
        std::fs::metadata(p)
            .is_ok_and(|m| (m.uid() == me || m.uid() == 0) && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0))
    })
}

/// The services of a local run's jobs.
async fn services(args: &ExecArgs, p: &Prepared, dir: &Path, terminal: &Arc<Terminal>) -> Services {
    let wants_image = p.jobs.iter().any(|j| j.assignment.image.as_ref().is_some_and(|i| !i.name.is_empty()));
    let cfg = crate::Config {
        server: String::new(),
        transport: viaduct_sdk::Transport::default(),
        registration_token: None,
        name: format!("{} (local)", crate::hostname()),
        labels: Vec::new(),
        work_dir: dir.to_path_buf(),
        slots: args.parallel,
        kill_grace: args.kill_grace,
        keep_workspaces: args.keep,
        dummy: false,
        ephemeral: false,
        clone_sources: false,
        no_host_jobs: false,
        protected: false,
        // The invoking user's machine and code: jobs run as that user.
        job_user_base: None,
        job_groups: Vec::new(),
        containers: (wants_image && !args.no_containers).then(|| crate::executor::container::ContainerConfig {
            socket: args.container_socket.clone(),
            cpus: 0.0,
            memory: 0,
            kill_grace: args.kill_grace,
            keep: args.keep,
        }),
        plugins: PluginConfig {
            default_memory_mb: 256,
            max_memory_mb: 2048,
            mounts: HashMap::from([("deploy".to_string(), dir.join("deploy"))]),
        },
        env: p.env.clone(),
        // A local run is one the user asked for now, on their own disk.
        min_free_disk: 0,
    };
    // Leftovers at once: the next job here would only wait for them.
    let backend = crate::backends(&cfg, &p.run_id, std::time::Duration::ZERO).await;
    let artifacts = p
        .jobs
        .iter()
        .filter_map(|j| {
            let planned = j.assignment.job.as_ref()?;
            let dest = args.artifacts_dir.as_ref().map(|d| d.join(&planned.job_id));
            Some((planned.job_id.clone(), (j.artifacts.clone(), dest)))
        })
        .collect();
    let note = {
        let t = Arc::clone(terminal);
        Arc::new(move |job: &str, note: String| t.note(job, &note))
    };
    let backend = Arc::new(workspace::Seeding {
        inner: backend,
        snapshot: Arc::new(p.snapshot.clone()),
        artifacts: Arc::new(artifacts),
        note,
    });
    let client = offline::client();
    let files = Arc::new(crate::files::Files::new(client.clone()));
    let uses_plugins =
        p.jobs.iter().flat_map(|j| &j.assignment.steps).any(|s| matches!(s.action, Some(Action::Uses(_))));
    let plugins = if uses_plugins {
        let source = ComponentSource::Local(p.catalog.components());
        match PluginHost::with_source(plugin_cache(dir), source, Arc::clone(&files), cfg.plugins.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("viaduct-runner exec: no plugin host ({e:#}): plugin steps will fail");
                None
            }
        }
    } else {
        None
    };
    Services {
        reports: Arc::clone(terminal) as Arc<dyn crate::report::Reports>,
        backend,
        sources: Arc::new(crate::source::Sources::new(client, String::new(), false, dir.join("tmp"))),
        files,
        plugins,
        runner_name: cfg.name.clone(),
        env: Arc::new(cfg.env),
        held: Arc::default(),
    }
}

/// Runs the jobs in `needs` order, at most `--parallel` at once; returns
/// the exit status.
async fn run(args: &ExecArgs, p: Prepared, dir: &Path) -> u8 {
    let terminal = Arc::new(Terminal::new(args.parallel > 1 && p.jobs.len() > 1));
    for j in &p.jobs {
        let steps = j.assignment.steps.iter().map(|s| (s.index, s.name.clone()));
        terminal.register(&job_id(j), &j.name, steps);
    }
    let services = services(args, &p, dir, &terminal).await;
    let jobs = &p.jobs;
    let n = jobs.len();
    let mut done: Vec<Option<Status>> = vec![None; n];
    let mut started = vec![false; n];
    let mut stops: HashMap<usize, JobStop> = HashMap::new();
    let mut running: JoinSet<(usize, Status)> = JoinSet::new();
    let mut interrupted = false;
    let finish_early = |i: usize, status: Status, why: &str, done: &mut [Option<Status>]| {
        terminal.ended_early(&job_id(&jobs[i]), status, why);
        done[i] = Some(status);
    };
    loop {
        // Start what can start; a skip can make another job ready.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                let ready = !started[i] && jobs[i].needs.iter().all(|d| done[*d].is_some());
                if !ready || running.len() >= args.parallel as usize {
                    continue;
                }
                started[i] = true;
                progressed = true;
                if interrupted {
                    finish_early(i, Status::Cancelled, "cancelled", &mut done);
                    continue;
                }
                let needs: Vec<(String, Status)> =
                    jobs[i].needs.iter().map(|d| (jobs[*d].key.clone(), done[*d].unwrap_or_default())).collect();
                match assignment::should_run(&jobs[i], &needs) {
                    Err(e) => {
                        let why = format!("cannot evaluate `if: {}`: {e}", jobs[i].condition);
                        finish_early(i, Status::Failure, &why, &mut done);
                        continue;
                    }
                    Ok(Some(skip)) => {
                        finish_early(i, Status::Skipped, &skip, &mut done);
                        continue;
                    }
                    Ok(None) => {}
                }
                let mut a = jobs[i].assignment.clone();
                match assignment::secrets_of(&jobs[i], &p.given)
                    .and_then(|s| Ok((s, assignment::registry_auth(&jobs[i], &p.given)?)))
                {
                    Ok((secrets, auth)) => {
                        a.secrets = secrets;
                        a.registry_auth = auth;
                    }
                    Err(why) => {
                        finish_early(i, Status::Failure, &why, &mut done);
                        continue;
                    }
                }
                let stop = JobStop::default();
                stops.insert(i, stop.clone());
                let (services, terminal, retries) = (services.clone(), Arc::clone(&terminal), jobs[i].retries);
                running.spawn(async move { (i, attempts(a, retries, services, stop, &terminal).await) });
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            ended = running.join_next() => {
                let Some(ended) = ended else { continue };
                let (i, status) = match ended {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("viaduct-runner exec: a job's task failed: {e}");
                        return 1;
                    }
                };
                stops.remove(&i);
                done[i] = Some(status);
                if status.is_failure() && jobs[i].fail_fast && !jobs[i].matrix_group.is_empty() {
                    for s in 0..n {
                        if s == i || jobs[s].matrix_group != jobs[i].matrix_group || done[s].is_some() {
                            continue;
                        }
                        if let Some(stop) = stops.get(&s) {
                            stop.cancel.cancel();
                        } else if !started[s] {
                            started[s] = true;
                            let why = format!("cancelled: {} failed (fail_fast)", jobs[i].name);
                            finish_early(s, Status::Cancelled, &why, &mut done);
                        }
                    }
                }
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                eprintln!("── interrupted: stopping the running jobs (their always() steps still run)");
                for stop in stops.values() {
                    stop.cancel.cancel();
                }
            }
        }
    }
    summary(jobs, &done, &terminal)
}

fn job_id(j: &LocalJob) -> String {
    j.assignment.job.as_ref().map(|r| r.job_id.clone()).unwrap_or_default()
}

/// Runs a job, again after a failure while it has retries left (as the
/// server retries it); its last status.
async fn attempts(
    mut a: viaduct_proto::v1::JobAssignment,
    retries: u32,
    services: Services,
    stop: JobStop,
    terminal: &Terminal,
) -> Status {
    let id = a.job.as_ref().map(|j| j.job_id.clone()).unwrap_or_default();
    for attempt in 1..=retries.saturating_add(1) {
        if let Some(job) = a.job.as_mut() {
            job.attempt = attempt;
        }
        a.env.insert("VIADUCT_ATTEMPT".into(), attempt.to_string());
        crate::job::run(a.clone(), services.clone(), stop.clone()).await;
        let status = terminal.ended(&id).map_or(Status::Failure, |e| e.status);
        let again = matches!(status, Status::Failure | Status::TimedOut) && !stop.cancel.is_cancelled();
        if !again || attempt > retries {
            return status;
        }
        eprintln!("── retrying (attempt {} of {})", attempt + 1, retries + 1);
    }
    Status::Failure
}

/// Prints each job's status and duration; the exit status.
fn summary(jobs: &[LocalJob], done: &[Option<Status>], terminal: &Terminal) -> u8 {
    let width = jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(0);
    let mut failed = false;
    let _ = std::io::Write::flush(&mut std::io::stdout());
    eprintln!("── summary");
    for (j, status) in jobs.iter().zip(done) {
        let status = status.unwrap_or(Status::Cancelled);
        let ended = terminal.ended(&job_id(j));
        let took = ended.as_ref().map(|e| e.took).unwrap_or_default();
        let why = ended.map(|e| e.message).filter(|m| !m.is_empty() && status != Status::Success);
        let bad = matches!(status, Status::Failure | Status::TimedOut | Status::Cancelled | Status::RunnerLost);
        let note = match (bad && j.continue_on_error, why) {
            (true, Some(w)) => format!("  {w} (continue_on_error)"),
            (true, None) => "  (continue_on_error)".into(),
            (false, Some(w)) => format!("  {w}"),
            (false, None) => String::new(),
        };
        failed |= bad && !j.continue_on_error;
        eprintln!("   {:<width$}  {:<9} {:>7.1}s{note}", j.name, status.word(), took.as_secs_f64());
    }
    u8::from(failed)
}

/// A client for the services of a local run: there is no server, so every
/// call (a plugin's cache or artifact import) fails at once, saying so.
mod offline {
    use std::{
        future::{Ready, ready},
        task::{Context, Poll},
    };

    use tonic::codegen::{Service, http::Uri};

    /// Refuses every connection.
    #[derive(Clone, Copy)]
    struct NoServer;

    impl Service<Uri> for NoServer {
        type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
        type Error = std::io::Error;
        type Future = Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _uri: Uri) -> Self::Future {
            ready(Err(std::io::Error::other(
                "not available in a local run (caches, artifacts and other server services need a Viaduct server)",
            )))
        }
    }

    pub(super) fn client() -> viaduct_sdk::Client {
        let channel =
            tonic::transport::Endpoint::from_static("http://local-run.invalid").connect_with_connector_lazy(NoServer);
        viaduct_sdk::Client::with_channel(channel, None).expect("a client without a token")
    }
}
