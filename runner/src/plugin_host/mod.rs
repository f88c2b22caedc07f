//! The plugin host: `uses:` steps as sandboxed WebAssembly components (the
//! `viaduct:plugin` `step` world) in wasmtime. A runner with a plugin host
//! offers the `wasi` executor.
//!
//! A plugin step runs *beside* its job's environment, not inside it: the
//! component runs in this process under wasmtime, sees the job's workspace
//! (the same directory a host job uses, or the directory bind-mounted into
//! a container job) preopened at `/workspace`, and reaches anything else
//! only through its imports. So a job can mix `run:` and `uses:` steps
//! whatever executor runs its `run:` steps.
//!
//! Per call: a fresh store ([`sandbox`]) with only the granted
//! capabilities, a memory cap, and a deadline. wasmtime's epoch counter
//! ticks every [`TICK`] on one thread for the whole runner while a call
//! runs ([`epoch`]; parked otherwise); every store
//! yields to the async runtime on each tick, so a plugin that never
//! returns cannot hold a worker thread, and the call future is dropped —
//! stopping the plugin and killing anything it `exec`'d — when the step is
//! cancelled or its deadline passes.

mod components;
mod epoch;
mod imports;
pub mod sandbox;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;
use viaduct_proto::v1::{JobRef, PluginManifest, Status};
use wasmtime::{Config, Engine, Store, component::Linker};

pub use self::components::{ComponentSource, Source};
use self::{
    bindings::{
        Step,
        viaduct::plugin::types::{Phase, RunMeta, StepInput},
    },
    components::Components,
    epoch::Epoch,
    sandbox::{CallContext, Grants, MEMORY_TRAP, StepState},
};
use crate::executor::{StepLog, StepOutcome, StepStop};
use crate::files::Files;

/// Generated from `plugins/wit`.
#[allow(missing_docs, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "step",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// How often the epoch ticks (the granularity of deadlines and yields).
pub const TICK: Duration = Duration::from_millis(10);
/// Largest output value and summary a plugin may return.
const MAX_TEXT: usize = 1024 * 1024;
/// Most outputs a plugin may return.
const MAX_OUTPUTS: usize = 1000;

/// Runner-wide plugin settings.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Memory cap when the manifest sets none, in MiB.
    pub default_memory_mb: u32,
    /// Largest memory cap a manifest may get, in MiB.
    pub max_memory_mb: u32,
    /// Host directories plugins may ask for by name (`deploy` → …).
    pub mounts: HashMap<String, PathBuf>,
}

/// One call of a plugin.
pub struct PluginCall<'a> {
    /// The job attempt.
    pub job: &'a JobRef,
    /// Component digest.
    pub digest: &'a str,
    /// Its manifest.
    pub manifest: &'a PluginManifest,
    /// `with:` values as JSON text.
    pub with: Vec<(String, String)>,
    /// The step's `allow.network`.
    pub allow_network: bool,
    /// Main or post phase, and the post phase's state.
    pub post_state: Option<Option<String>>,
    /// The workspace on the host.
    pub workspace: PathBuf,
    /// The granted env.
    pub env: BTreeMap<String, String>,
    /// Where `exec` runs programs (the job's executor).
    pub programs: std::sync::Arc<dyn crate::executor::programs::Programs>,
    /// Run metadata.
    pub meta: RunInfo,
}

/// Run metadata for the plugin (the `run-meta` record).
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// Job id.
    pub job_id: String,
    /// Job name.
    pub job_name: String,
    /// Step index.
    pub step_index: u32,
    /// Step id.
    pub step_id: String,
    /// Pipeline.
    pub pipeline: String,
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Tag.
    pub tag: String,
    /// Commit.
    pub commit: String,
    /// Event.
    pub event: String,
    /// Runner name.
    pub runner: String,
}

/// How a plugin call ended.
#[derive(Debug, Clone)]
pub struct PluginResult {
    /// Status, message and outputs.
    pub outcome: StepOutcome,
    /// Markdown summary.
    pub summary: String,
    /// Main phase: the state to call the post phase with.
    pub post_state: Option<String>,
    /// Where the component came from.
    pub source: Option<Source>,
}

impl PluginResult {
    fn error(message: impl Into<String>) -> Self {
        Self { outcome: StepOutcome::error(message), summary: String::new(), post_state: None, source: None }
    }
}

/// The wasmtime engine, linker and component cache of a runner.
pub struct PluginHost {
    engine: Engine,
    /// Ticks `engine`'s epoch while a call runs.
    epoch: Epoch,
    components: Components,
    files: Arc<Files>,
    config: PluginConfig,
}

impl PluginHost {
    /// A host caching components in `dir`, fetching through `client`.
    pub fn new(
        dir: PathBuf,
        client: viaduct_sdk::Client,
        files: Arc<Files>,
        config: PluginConfig,
    ) -> anyhow::Result<Arc<Self>> {
        Self::with_source(dir, ComponentSource::Server(client), files, config)
    }

    /// A host caching components in `dir`, taking them from `source`.
    pub fn with_source(
        dir: PathBuf,
        source: ComponentSource,
        files: Arc<Files>,
        config: PluginConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("cannot start wasmtime: {e:#}"))?;
        let mut linker = Linker::<StepState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        // Defines the `viaduct:plugin/*@1.1.0` interfaces. wasmtime's linker
        // matches imports by semver (every `@1.x.y` name also answers to
        // `@1`), so a component built against 1.0.0 — importing
        // `viaduct:plugin/log@1.0.0` and the like — links to these: 1.1 only
        // added `exec-all`, and changed nothing of 1.0's interfaces.
        Step::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("cannot link the plugin imports: {e:#}"))?;
        let ticker = engine.clone();
        let epoch = Epoch::start(move || ticker.increment_epoch())?;
        let components = Components::new(engine.clone(), linker, dir, source);
        Ok(Arc::new(Self { engine, epoch, components, files, config }))
    }

    /// Loads (fetching and compiling if needed) a component ahead of use.
    pub async fn prepare(&self, digest: &str) -> Result<Source, String> {
        self.components.get(digest).await.map(|(_, s)| s)
    }

    /// Runs one plugin call to its end, or until `stop`.
    pub async fn run(&self, call: PluginCall<'_>, log: &mut StepLog, stop: &StepStop) -> PluginResult {
        let (pre, source) = match self.components.get(call.digest).await {
            Ok(p) => p,
            Err(e) => {
                let m = call.manifest;
                return PluginResult::error(format!("cannot load plugin {}@{}: {e}", m.name, m.version));
            }
        };
        let caps = call.manifest.capabilities.clone().unwrap_or_default();
        let memory_mb = match caps.memory_mb {
            0 => self.config.default_memory_mb,
            m => m.min(self.config.max_memory_mb),
        };
        let grants = Grants { caps: &caps, allow_network: call.allow_network, mounts: &self.config.mounts, memory_mb };
        let preopens = match sandbox::preopens(&call.workspace, &grants) {
            Ok(p) => p,
            Err(e) => return PluginResult::error(e.0),
        };
        let context = Arc::new(CallContext {
            job: call.job.clone(),
            workspace: call.workspace.clone(),
            env: call.env.clone(),
            exec_allow: caps.exec.clone(),
            programs: Arc::clone(&call.programs),
            preopens,
            files: Arc::clone(&self.files),
        });
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let state = match sandbox::state(context, &grants, tx) {
            Ok(s) => s,
            Err(e) => return PluginResult::error(e.0),
        };
        let input = input(&call);
        let engine = &self.engine;
        let ticking = self.epoch.ticking();
        let invoke = async move {
            let _ticking = ticking;
            let mut store = Store::new(engine, state);
            store.limiter(|s| &mut s.limiter);
            // Yield to the runtime on every epoch tick: cancellable, and
            // never holding a worker thread for long.
            store.epoch_deadline_async_yield_and_update(1);
            let step = pre.instantiate_async(&mut store).await?;
            step.call_run(&mut store, &input).await
        };
        let stopped = async {
            match stop.deadline {
                Some(d) => tokio::select! {
                    () = stop.cancel.cancelled() => Status::Cancelled,
                    () = tokio::time::sleep_until(d.into()) => Status::TimedOut,
                },
                None => {
                    stop.cancel.cancelled().await;
                    Status::Cancelled
                }
            }
        };
        let call_and_stop = async {
            tokio::select! {
                r = invoke => Ok(r),
                s = stopped => Err(s),
            }
        };
        let drain = async {
            while let Some(chunk) = rx.recv().await {
                log.write(&chunk).await;
            }
        };
        let (result, ()) = tokio::join!(call_and_stop, drain);
        let mut out = match result {
            Err(status) => {
                let mut r = PluginResult::error(if status == Status::TimedOut { "timed out" } else { "cancelled" });
                r.outcome.status = status;
                r
            }
            Ok(Err(trap)) => PluginResult::error(describe_trap(&trap, memory_mb)),
            Ok(Ok(Err(e))) => {
                let mut r = PluginResult::error(one_line(&e.message));
                r.outcome.outputs = bounded(e.outputs);
                r.summary = e.summary.map(|s| truncate(s, MAX_TEXT)).unwrap_or_default();
                r
            }
            Ok(Ok(Ok(o))) => PluginResult {
                outcome: StepOutcome {
                    status: Status::Success,
                    exit_code: None,
                    message: String::new(),
                    outputs: bounded(o.outputs),
                },
                summary: o.summary.map(|s| truncate(s, MAX_TEXT)).unwrap_or_default(),
                post_state: o.post_state,
                source: None,
            },
        };
        out.source = Some(source);
        out
    }
}

fn input(call: &PluginCall<'_>) -> StepInput {
    let m = &call.meta;
    StepInput {
        phase: if call.post_state.is_some() { Phase::Post } else { Phase::Main },
        with: call.with.clone(),
        env: call.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        meta: RunMeta {
            run_id: m.run_id.clone(),
            job_id: m.job_id.clone(),
            job_name: m.job_name.clone(),
            step_index: m.step_index,
            step_id: m.step_id.clone(),
            pipeline: m.pipeline.clone(),
            repo: m.repo.clone(),
            branch: m.branch.clone(),
            tag: m.tag.clone(),
            commit: m.commit.clone(),
            event: m.event.clone(),
            runner: m.runner.clone(),
        },
        workspace: sandbox::WORKSPACE.to_string(),
        state: call.post_state.clone().flatten(),
    }
}

/// A trap as a step error a person can act on.
fn describe_trap(trap: &wasmtime::Error, memory_mb: u32) -> String {
    let text = format!("{trap:#}");
    if text.contains(MEMORY_TRAP) {
        return format!("{MEMORY_TRAP} of {memory_mb} MiB");
    }
    match trap.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "the plugin crashed (it panicked or aborted; its message is in the log above)".into()
        }
        Some(t) => format!("the plugin crashed: {t}"),
        None => format!("the plugin failed: {}", one_line(&text)),
    }
}

fn one_line(s: &str) -> String {
    truncate(s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "), 2000)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("\n…(truncated)");
    }
    s
}

fn bounded(outputs: Vec<(String, String)>) -> BTreeMap<String, String> {
    outputs.into_iter().take(MAX_OUTPUTS).map(|(k, v)| (k, truncate(v, MAX_TEXT))).collect()
}
