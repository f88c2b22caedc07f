//! `viaduct plugins`, `viaduct artifacts` and `viaduct caches`: the
//! commands that move files.

use std::{
    io::Write,
    path::{Component, Path, PathBuf},
};

use serde_json::json;
use tokio_stream::StreamExt;
use viaduct_proto::v1::{
    Artifact, CacheStatsRequest, DeleteCacheRequest, DownloadArtifactRequest, GetPluginRequest, ListArtifactsRequest,
    ListCachesRequest, ListPluginsRequest, Plugin, PublishPluginRequest, publish_plugin_request::Part,
};
use viaduct_sdk::Client;

use super::{
    Failure,
    args::{ArtifactsCommand, CachesCommand, PluginsCommand},
    view,
};

/// Bytes per uploaded chunk.
const CHUNK: usize = 256 * 1024;

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn plugin_text(p: &Plugin) -> String {
    let m = p.manifest.clone().unwrap_or_default();
    let caps = m.capabilities.clone().unwrap_or_default();
    let mut out =
        format!("{}@{}  {}\n  digest  {}\n  size    {}\n", m.name, m.version, m.description, p.digest, bytes(p.size));
    let mut grants = Vec::new();
    if caps.network {
        grants.push("network (when a step allows it)".to_string());
    }
    if !caps.exec.is_empty() {
        grants.push(format!("exec: {}", caps.exec.join(", ")));
    }
    if !caps.mounts.is_empty() {
        grants.push(format!("mounts: {}", caps.mounts.join(", ")));
    }
    if caps.memory_mb > 0 {
        grants.push(format!("memory: {} MiB", caps.memory_mb));
    }
    let grants = if grants.is_empty() { "workspace only".to_string() } else { grants.join("; ") };
    out.push_str(&format!("  can     {grants}\n"));
    if m.post {
        out.push_str(&format!(
            "  post    after the job's steps, if {}\n",
            if m.post_if.is_empty() { "success()" } else { &m.post_if }
        ));
    }
    let mut inputs: Vec<_> = m.inputs.iter().collect();
    inputs.sort_by_key(|(k, _)| k.as_str());
    for (name, p) in inputs {
        let req = if p.required { " (required)" } else { "" };
        let def = if p.default_json.is_empty() { String::new() } else { format!(" [default {}]", p.default_json) };
        out.push_str(&format!("  with.{name}{req}{def}  {}\n", p.description));
    }
    let mut outputs: Vec<_> = m.outputs.iter().collect();
    outputs.sort_by_key(|(k, _)| k.as_str());
    for (name, p) in outputs {
        out.push_str(&format!("  outputs.{name}  {}\n", p.description));
    }
    out
}

/// The manifest for `wasm`: `--manifest`, else NAME.toml beside it, else
/// ./plugin.toml.
fn manifest_path(wasm: &Path, given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(m) = given {
        return Ok(m);
    }
    let beside = wasm.with_extension("toml");
    if beside.is_file() {
        return Ok(beside);
    }
    let here = PathBuf::from("plugin.toml");
    if here.is_file() {
        return Ok(here);
    }
    Err(Failure::Usage(format!(
        "no manifest: pass --manifest, or put {} or ./plugin.toml next to it",
        beside.display()
    )))
}

/// `viaduct plugins …`.
pub async fn plugins(client: &Client, cmd: PluginsCommand) -> Result<(), Failure> {
    match cmd {
        PluginsCommand::Publish { wasm, manifest, replace } => {
            let manifest = manifest_path(&wasm, manifest)?;
            let toml = std::fs::read_to_string(&manifest)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", manifest.display())))?;
            let data =
                std::fs::read(&wasm).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", wasm.display())))?;
            let mut msgs = vec![PublishPluginRequest { part: Some(Part::ManifestToml(toml)), replace }];
            msgs.extend(
                data.chunks(CHUNK).map(|c| PublishPluginRequest { part: Some(Part::Data(c.to_vec())), replace }),
            );
            let resp = client.plugins().publish(tokio_stream::iter(msgs)).await.map_err(|s| {
                // Manifest errors name plugin.toml: say which file that is.
                let f = Failure::from(s);
                match f {
                    Failure::Invalid(m) => Failure::Invalid(m.replace("plugin.toml", &manifest.display().to_string())),
                    other => other,
                }
            })?;
            let p = resp.into_inner();
            let m = p.manifest.clone().unwrap_or_default();
            println!("published {}@{} ({}, {})", m.name, m.version, p.digest, bytes(p.size));
            Ok(())
        }
        PluginsCommand::List { name, json } => {
            let list = client
                .plugins()
                .list(ListPluginsRequest { name: name.unwrap_or_default() })
                .await?
                .into_inner()
                .plugins;
            if json {
                let items: Vec<serde_json::Value> = list
                    .iter()
                    .map(|p| {
                        let m = p.manifest.clone().unwrap_or_default();
                        json!({"name": m.name, "version": m.version, "description": m.description, "digest": p.digest, "size": p.size})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    let m = p.manifest.clone().unwrap_or_default();
                    vec![m.name, m.version, bytes(p.size), view::local(p.published_at.as_ref()), m.description]
                })
                .collect();
            print!("{}", view::table(&["NAME", "VERSION", "SIZE", "PUBLISHED", "DESCRIPTION"], &rows));
            Ok(())
        }
        PluginsCommand::Get { reference } => {
            let p = client.plugins().get(GetPluginRequest { reference }).await?.into_inner();
            print!("{}", plugin_text(&p));
            Ok(())
        }
    }
}

/// Where an artifact goes under `dir`: its name as a relative path, checked
/// again here (a server is not trusted to name files on this machine).
fn destination(dir: &Path, name: &str) -> Result<PathBuf, Failure> {
    let rel = Path::new(name);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Failure::Server(format!("refusing artifact name `{name}`: not a plain relative path")));
    }
    Ok(dir.join(rel))
}

async fn download(client: &Client, a: &Artifact, dir: &Path) -> Result<PathBuf, Failure> {
    let dest = destination(dir, &a.name)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", parent.display())))?;
    }
    let req = DownloadArtifactRequest { run_id: a.run_id.clone(), job_id: a.job_id.clone(), name: a.name.clone() };
    let mut stream = client.artifacts().download(req).await?.into_inner();
    let tmp = dest.with_extension("viaduct-part");
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| Failure::Usage(format!("cannot write {}: {e}", tmp.display())))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk.data);
        size += chunk.data.len() as u64;
        file.write_all(&chunk.data).map_err(|e| Failure::Usage(format!("cannot write {}: {e}", tmp.display())))?;
    }
    let digest = format!("blake3:{}", hasher.finalize().to_hex());
    if digest != a.digest || size != a.size {
        let _ = std::fs::remove_file(&tmp);
        return Err(Failure::Server(format!("artifact `{}` arrived damaged ({size} bytes, {digest})", a.name)));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(a.mode & 0o777));
    }
    drop(file);
    std::fs::rename(&tmp, &dest).map_err(|e| Failure::Usage(format!("cannot write {}: {e}", dest.display())))?;
    Ok(dest)
}

/// `viaduct artifacts …`.
pub async fn artifacts(client: &Client, cmd: ArtifactsCommand) -> Result<(), Failure> {
    match cmd {
        ArtifactsCommand::List { run, json } => {
            let list = client
                .artifacts()
                .list(ListArtifactsRequest { run_id: run.clone(), job_id: String::new() })
                .await?
                .into_inner()
                .artifacts;
            if json {
                let items: Vec<serde_json::Value> = list
                    .iter()
                    .map(|a| json!({"job_id": a.job_id, "job": a.job_name, "name": a.name, "size": a.size, "digest": a.digest}))
                    .collect();
                println!("{}", serde_json::Value::Array(items));
                return Ok(());
            }
            if list.is_empty() {
                println!("run {run} has no artifacts");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        a.job_id.clone(),
                        a.job_name.clone(),
                        a.name.clone(),
                        bytes(a.size),
                        view::local(a.expires_at.as_ref()),
                    ]
                })
                .collect();
            print!("{}", view::table(&["JOB", "JOB NAME", "NAME", "SIZE", "EXPIRES"], &rows));
            Ok(())
        }
        ArtifactsCommand::Get { run, name, job, dir } => {
            let job_id = job.unwrap_or_default();
            let list = client
                .artifacts()
                .list(ListArtifactsRequest { run_id: run.clone(), job_id: job_id.clone() })
                .await?
                .into_inner()
                .artifacts;
            let prefix = name.strip_suffix('*').or_else(|| name.ends_with('/').then_some(name.as_str()));
            let chosen: Vec<&Artifact> = match prefix {
                Some(p) => list.iter().filter(|a| a.name.starts_with(p)).collect(),
                None => list.iter().filter(|a| a.name == name).collect(),
            };
            if chosen.is_empty() {
                return Err(Failure::Usage(format!("run {run} has no artifact `{name}`")));
            }
            if prefix.is_none() && chosen.len() > 1 {
                let jobs: Vec<String> = chosen.iter().map(|a| format!("{} ({})", a.job_id, a.job_name)).collect();
                return Err(Failure::Usage(format!(
                    "several jobs have `{name}`: pick one with --job ({})",
                    jobs.join(", ")
                )));
            }
            for a in chosen {
                let path = download(client, a, &dir).await?;
                println!("{}  {}", path.display(), bytes(a.size));
            }
            Ok(())
        }
    }
}

/// `viaduct caches …`.
pub async fn caches(client: &Client, cmd: CachesCommand) -> Result<(), Failure> {
    match cmd {
        CachesCommand::List { scope, prefix } => {
            let req = ListCachesRequest { scope: scope.unwrap_or_default(), key_prefix: prefix.unwrap_or_default() };
            let entries = client.caches().list(req).await?.into_inner().entries;
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.scope.clone(),
                        e.branch.clone(),
                        e.key.clone(),
                        bytes(e.size),
                        view::local(e.last_used_at.as_ref()),
                    ]
                })
                .collect();
            print!("{}", view::table(&["SCOPE", "BRANCH", "KEY", "SIZE", "LAST USED"], &rows));
            Ok(())
        }
        CachesCommand::Delete { scope, branch, prefix } => {
            let req = DeleteCacheRequest {
                scope: scope.clone(),
                branch: branch.unwrap_or_default(),
                key_prefix: prefix.unwrap_or_default(),
            };
            let n = client.caches().delete(req).await?.into_inner().deleted;
            println!("deleted {n} cache entries of {scope}");
            Ok(())
        }
        CachesCommand::Stats => {
            let s = client.caches().stats(CacheStatsRequest {}).await?.into_inner();
            println!("entries   {}", s.entries);
            println!("stored    {} of {}", bytes(s.bytes), bytes(s.max_bytes));
            println!(
                "restores  {} hits, {} partial, {} misses (since the server started)",
                s.hits, s.partial_hits, s.misses
            );
            println!("evicted   {}", s.evicted);
            Ok(())
        }
    }
}
