//! What one plugin call gets: its store data, its WASI context (the
//! capabilities), its memory limit and its log pipe.
//!
//! Nothing is ambient: the WASI context starts empty (wasmtime-wasi
//! inherits nothing by default) and this module adds exactly the workspace
//! preopen, the manifest's granted mounts, the step's env, and — only when
//! the manifest asks and the step grants it — the network.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use viaduct_proto::v1::{JobRef, PluginCapabilities};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{
    FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    cli::{IsTerminal, StdoutStream},
};

use crate::files::Files;

/// Where a plugin sees the job workspace.
pub const WORKSPACE: &str = "/workspace";

/// Everything a call's host imports need besides WASI.
pub struct CallContext {
    /// The job attempt (for cache and artifact calls).
    pub job: JobRef,
    /// The workspace on the host.
    pub workspace: PathBuf,
    /// The step's granted env.
    pub env: BTreeMap<String, String>,
    /// Programs `exec` may run.
    pub exec_allow: Vec<String>,
    /// Where they run (the job's executor).
    pub programs: Arc<dyn crate::executor::programs::Programs>,
    /// Preopened directories: (guest path, host path), the workspace first.
    pub preopens: Vec<(String, PathBuf)>,
    /// Cache and artifact transfers.
    pub files: Arc<Files>,
}

/// The data of one call's store.
pub struct StepState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimit,
    /// The step log (plugin stdout/stderr, `log.write`, `exec` output).
    pub(super) log: mpsc::Sender<Vec<u8>>,
    pub(super) call: Arc<CallContext>,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The memory cap of a call: a growth past it traps with a message that
/// says so (a refused `memory.grow` would otherwise surface as an opaque
/// allocation failure inside the plugin).
pub struct MemoryLimit {
    max_bytes: usize,
}

/// The message of a trap caused by the memory cap.
pub const MEMORY_TRAP: &str = "the plugin exceeded its memory limit";

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            return Err(wasmtime::format_err!("{MEMORY_TRAP} of {} MiB", self.max_bytes >> 20));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Why a sandbox could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

/// What a call may do, from the manifest, the step and the runner.
pub struct Grants<'a> {
    /// The manifest's capabilities.
    pub caps: &'a PluginCapabilities,
    /// The step's `allow.network`.
    pub allow_network: bool,
    /// Runner-configured mounts by name.
    pub mounts: &'a HashMap<String, PathBuf>,
    /// Memory cap in MiB (already clamped by the runner).
    pub memory_mb: u32,
}

/// The directories a call gets: the workspace at `/workspace`, and each
/// mount the manifest asks for at `/<name>` (created if missing).
pub fn preopens(workspace: &Path, grants: &Grants<'_>) -> Result<Vec<(String, PathBuf)>, SandboxError> {
    let mut out = vec![(WORKSPACE.to_string(), workspace.to_path_buf())];
    for name in &grants.caps.mounts {
        let host = grants.mounts.get(name).ok_or_else(|| {
            SandboxError(format!(
                "the plugin needs the `{name}` mount, which this runner does not provide (start it with --plugin-mount {name}=DIR)"
            ))
        })?;
        std::fs::create_dir_all(host)
            .map_err(|e| SandboxError(format!("cannot create the `{name}` mount {}: {e}", host.display())))?;
        out.push((format!("/{name}"), host.clone()));
    }
    Ok(out)
}

/// A path as the plugin sees it (absolute, or relative to `/workspace`)
/// → the host path, refusing anything outside the call's preopens.
pub fn host_path(call: &CallContext, guest: &str) -> Result<PathBuf, String> {
    let absolute = if guest.starts_with('/') { guest.to_string() } else { format!("{WORKSPACE}/{guest}") };
    for (prefix, host) in &call.preopens {
        if let Some(rest) = absolute.strip_prefix(prefix.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return crate::files::paths::resolve(host, rest.trim_start_matches('/'));
        }
    }
    let dirs: Vec<&str> = call.preopens.iter().map(|(p, _)| p.as_str()).collect();
    Err(format!("`{guest}` is outside the plugin's directories ({})", dirs.join(", ")))
}

/// Builds the store data of one call.
pub fn state(
    call: Arc<CallContext>,
    grants: &Grants<'_>,
    log: mpsc::Sender<Vec<u8>>,
) -> Result<StepState, SandboxError> {
    let mut b = WasiCtxBuilder::new();
    b.envs(&call.env.iter().collect::<Vec<_>>());
    b.initial_cwd(WORKSPACE);
    for (guest, host) in &call.preopens {
        preopen(&mut b, host, guest)?;
    }
    if grants.caps.network && grants.allow_network {
        b.inherit_network().allow_ip_name_lookup(true).allow_tcp(true).allow_udp(true);
    } else {
        b.allow_ip_name_lookup(false).allow_tcp(false).allow_udp(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
    }
    let pipe = LogPipe { tx: log.clone() };
    b.stdout(pipe.clone()).stderr(pipe);
    Ok(StepState {
        wasi: b.build(),
        table: ResourceTable::new(),
        limiter: MemoryLimit { max_bytes: (grants.memory_mb as usize) << 20 },
        log,
        call,
    })
}

fn preopen(b: &mut WasiCtxBuilder, host: &Path, guest: &str) -> Result<(), SandboxError> {
    b.preopened_dir(host, guest, FsPerms::ReadWrite)
        .map(|_| ())
        .map_err(|e| SandboxError(format!("cannot open {} for the plugin: {e}", host.display())))
}

/// Plugin stdout and stderr, into the step log.
#[derive(Clone)]
struct LogPipe {
    tx: mpsc::Sender<Vec<u8>>,
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(PipeWriter { tx: Mutex::new(PollSender::new(self.tx.clone())) })
    }
}

/// An `AsyncWrite` over the log channel, with its backpressure.
struct PipeWriter {
    // A mutex only to be `Sync`; it is never contended.
    tx: Mutex<PollSender<Vec<u8>>>,
}

impl tokio::io::AsyncWrite for PipeWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.poll_reserve(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(Ok(())) => match tx.send_item(buf.to_vec()) {
                Ok(()) => Poll::Ready(Ok(buf.len())),
                Err(_) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).close();
        Poll::Ready(Ok(()))
    }
}
