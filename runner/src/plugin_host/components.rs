//! Plugin components: fetched by digest on first use (from the server, or
//! for a local run from the components it was given — see
//! [`ComponentSource`]), compiled once, cached on disk and in memory.
//!
//! On disk, under `WORK_DIR/plugins/`: `<hex>.wasm` (verified against its
//! digest as it is downloaded) and `<hex>-<engine>.cwasm`, the compiled
//! form for this wasmtime version and configuration (the engine
//! fingerprint is part of the name, so an upgraded runner never loads an
//! incompatible file). Only `.cwasm` files this runner wrote are ever
//! deserialized. In memory: the `StepPre` (an `InstancePre` with every
//! import resolved), so a warm call is a fresh store plus instantiate.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::sync::OnceCell;
use tokio_stream::StreamExt;
use viaduct_proto::v1::FetchPluginRequest;
use wasmtime::{
    Engine,
    component::{Component, Linker},
};

use super::{bindings::StepPre, sandbox::StepState};

/// Compiled, linked plugin components.
pub struct Components {
    engine: Engine,
    linker: Linker<StepState>,
    dir: PathBuf,
    fingerprint: String,
    source: ComponentSource,
    loaded: Mutex<HashMap<String, Arc<OnceCell<StepPre<StepState>>>>>,
}

/// Where components come from, by digest.
pub enum ComponentSource {
    /// The server (`Plugins.Fetch`), for a connected runner.
    Server(viaduct_sdk::Client),
    /// Components held in memory (`viaduct-runner exec`: the embedded set
    /// or `--plugins-dir`), by digest.
    Local(HashMap<String, Arc<[u8]>>),
}

/// How a component was obtained (for logs and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Already linked in memory.
    Memory,
    /// Deserialized from this runner's compiled cache.
    Disk,
    /// Compiled now (fetched first if needed).
    Compiled,
}

fn hex_of(digest: &str) -> Result<&str, String> {
    let hex = digest.strip_prefix("blake3:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!("`{digest}` is not a plugin digest"))
    }
}

impl Components {
    /// The cache in `dir`, fetching from `source`.
    pub fn new(engine: Engine, linker: Linker<StepState>, dir: PathBuf, source: ComponentSource) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let fingerprint = format!("{:016x}", h.finish());
        Self { engine, linker, dir, fingerprint, source, loaded: Mutex::default() }
    }

    /// The linked component `digest`, and where it came from.
    pub async fn get(&self, digest: &str) -> Result<(StepPre<StepState>, Source), String> {
        let hex = hex_of(digest)?.to_string();
        let cell = Arc::clone(self.loaded.lock().unwrap_or_else(|p| p.into_inner()).entry(hex.clone()).or_default());
        if let Some(pre) = cell.get() {
            return Ok((pre.clone(), Source::Memory));
        }
        let mut source = Source::Memory;
        let pre = cell
            .get_or_try_init(|| async {
                let (component, s) = self.load(digest, &hex).await?;
                source = s;
                let pre = self
                    .linker
                    .instantiate_pre(&component)
                    .map_err(|e| format!("the plugin needs imports this runner does not provide: {e:#}"))?;
                StepPre::new(pre)
                    .map_err(|e| format!("the plugin does not implement the viaduct:plugin step world: {e:#}"))
            })
            .await?;
        Ok((pre.clone(), source))
    }

    async fn load(&self, digest: &str, hex: &str) -> Result<(Component, Source), String> {
        let cwasm = self.dir.join(format!("{hex}-{}.cwasm", self.fingerprint));
        if cwasm.is_file() {
            let (engine, path) = (self.engine.clone(), cwasm.clone());
            // SAFETY: the file is one this runner compiled and wrote (named
            // by the engine fingerprint, in its own work directory).
            let loaded = tokio::task::spawn_blocking(move || unsafe { Component::deserialize_file(&engine, &path) })
                .await
                .map_err(|e| format!("loading task failed: {e}"))?;
            match loaded {
                Ok(c) => return Ok((c, Source::Disk)),
                Err(e) => {
                    tracing::warn!(error = %e, file = %cwasm.display(), "compiled plugin unreadable: recompiling");
                    let _ = std::fs::remove_file(&cwasm);
                }
            }
        }
        let wasm = self.dir.join(format!("{hex}.wasm"));
        if !wasm.is_file() {
            self.fetch(digest, hex, &wasm).await?;
        }
        let engine = self.engine.clone();
        let started = std::time::Instant::now();
        let component = tokio::task::spawn_blocking(move || -> Result<Component, String> {
            let c = Component::from_file(&engine, &wasm).map_err(|e| format!("cannot compile the plugin: {e:#}"))?;
            let bytes = c.serialize().map_err(|e| format!("cannot serialize the compiled plugin: {e:#}"))?;
            write_atomically(&cwasm, &bytes).map_err(|e| format!("cannot cache the compiled plugin: {e}"))?;
            Ok(c)
        })
        .await
        .map_err(|e| format!("compile task failed: {e}"))??;
        tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, "plugin compiled");
        Ok((component, Source::Compiled))
    }

    /// Gets `digest` into `dest`, checking the bytes against it.
    async fn fetch(&self, digest: &str, hex: &str, dest: &Path) -> Result<(), String> {
        let bytes = match &self.source {
            ComponentSource::Server(client) => download(client, digest).await?,
            ComponentSource::Local(components) => components
                .get(digest)
                .ok_or_else(|| format!("plugin {digest} is not among the local plugins"))?
                .to_vec(),
        };
        if blake3::hash(&bytes).to_hex().as_str() != hex {
            return Err(format!("plugin {digest}: its bytes have a different digest"));
        }
        write_atomically(dest, &bytes).map_err(|e| format!("cannot store plugin {digest}: {e}"))
    }
}

/// Downloads `digest` from the server.
async fn download(client: &viaduct_sdk::Client, digest: &str) -> Result<Vec<u8>, String> {
    let mut stream = client
        .plugins()
        .fetch(FetchPluginRequest { digest: digest.to_string() })
        .await
        .map_err(|s| format!("cannot fetch plugin {digest}: {}", viaduct_sdk::status_line(&s)))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| format!("fetching plugin {digest} failed: {}", viaduct_sdk::status_line(&s)))?;
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
