//! The plugin registry: published WASI step plugins, by name and version.
//!
//! A version is a manifest ([`manifest`]) plus a component checked by
//! [`component`] and kept in the blob store by digest. Versions are
//! immutable unless replaced on purpose; every digest ever published is
//! remembered in `plugin_blobs`, so a run planned before a replace still
//! finds the component it resolved. Pipelines name plugins by a version
//! requirement ([`PluginRegistry::resolve`]); the run plan then carries the
//! exact digest and manifest, so a run never changes plugin under its feet.

pub mod component;
pub mod manifest;

use std::{borrow::Cow, collections::HashSet, path::Path, sync::Arc};

use semver::{Version, VersionReq};
use viaduct_proto::v1::{Plugin, PluginManifest};

use crate::{
    blobs::{Blob, BlobStore},
    convert::timestamp,
    error::{Error, Result},
    store::{
        Store, T, WriteSet, now_ms,
        records::{PluginRecord, SCHEMA_VERSION},
    },
};

/// Largest component accepted.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// A file of a plugin to publish: `NAME.wasm` (the component) or
/// `NAME.toml` (its manifest).
#[derive(Debug)]
pub struct PluginFile {
    /// Its name, for messages: a path, or `embedded:NAME.toml`.
    pub name: String,
    /// Its contents.
    pub bytes: Cow<'static, [u8]>,
}

/// The `*.wasm` and `*.toml` files in `dir` (not below it).
fn read_plugin_files(dir: &Path) -> std::io::Result<Vec<PluginFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "wasm" || x == "toml") {
            let bytes =
                std::fs::read(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            files.push(PluginFile { name: path.display().to_string(), bytes: Cow::Owned(bytes) });
        }
    }
    Ok(files)
}

/// Published plugins over the `plugins` and `plugin_blobs` trees.
pub struct PluginRegistry {
    store: Arc<Store>,
    blobs: Arc<BlobStore>,
}

fn key(name: &str, version: &str) -> Vec<u8> {
    [name.as_bytes(), b"\0", version.as_bytes()].concat()
}

/// The requirement a pipeline's `uses: NAME@VERSION` means: `1` → newest
/// 1.x, `1.2` → newest 1.2.x, `1.2.3` (or a pre-release) → exactly that,
/// empty → newest.
pub fn requirement(version: &str) -> Result<VersionReq> {
    VersionReq::parse(&viaduct_sdk::planned::version_requirement(version))
        .map_err(|e| Error::invalid(format!("`{version}` is not a version requirement: {e}")))
}

impl PluginRegistry {
    /// The registry over `store`, with components in `blobs`.
    pub fn new(store: Arc<Store>, blobs: Arc<BlobStore>) -> Self {
        Self { store, blobs }
    }

    /// The blob store components live in.
    pub fn blobs(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// Parses a manifest; errors name `file`, line and column.
    pub fn parse_manifest(file: &str, text: &str) -> Result<PluginManifest> {
        manifest::parse(file, text).map_err(Error::InvalidFile)
    }

    /// Registers `blob` (already in the blob store) as the component of
    /// the plugin `manifest_toml` describes. Idempotent for the same bytes
    /// and manifest; a different one for an existing version needs
    /// `replace`.
    pub async fn publish(&self, file: &str, manifest_toml: &str, blob: &Blob, replace: bool) -> Result<Plugin> {
        let manifest = Self::parse_manifest(file, manifest_toml)?;
        let bytes = self.blobs.read_all(&blob.digest, MAX_COMPONENT_BYTES).await?;
        let checked = manifest.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let refused = |e: component::Invalid| Error::invalid(format!("the component is refused: {e}"));
            let imports = component::check(&bytes).map_err(refused)?;
            component::check_manifest(&imports, &checked).map_err(refused)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("component check: {e}")))??;
        let k = key(&manifest.name, &manifest.version);
        let reference = format!("{}@{}", manifest.name, manifest.version);
        if let Some(old) = self.store.get::<PluginRecord>(T::Plugins, &k)? {
            let old_plugin = old.plugin.clone().unwrap_or_default();
            if old_plugin.digest == blob.digest && old.manifest_toml == manifest_toml {
                return Ok(old_plugin);
            }
            if !replace {
                return Err(Error::AlreadyExists(format!(
                    "{reference} is already published with a different component or manifest ({}); \
                     publish a new version, or replace it on purpose",
                    old_plugin.digest
                )));
            }
        }
        let plugin = Plugin {
            manifest: Some(manifest),
            digest: blob.digest.clone(),
            size: blob.size,
            published_at: timestamp(now_ms()),
        };
        let mut ws = WriteSet::default();
        ws.put(
            T::Plugins,
            &k,
            &PluginRecord { schema: SCHEMA_VERSION, plugin: Some(plugin.clone()), manifest_toml: manifest_toml.into() },
        );
        ws.put_raw(T::PluginBlobs, blob.digest.as_bytes(), reference.clone().into_bytes());
        self.store.commit_durable(&ws).await?;
        tracing::info!(plugin = %reference, digest = %blob.digest, size = blob.size, "plugin published");
        Ok(plugin)
    }

    /// Publishes the first-party plugins at start: those in `dir`
    /// (`--plugins-dir`) when given, else those this build embeds
    /// (`viaduct_bundle::plugins`), else none; logs which.
    pub async fn publish_first_party(&self, dir: Option<&Path>) -> anyhow::Result<Vec<Plugin>> {
        use anyhow::Context as _;
        let (source, files) = match dir {
            Some(dir) => (
                dir.display().to_string(),
                read_plugin_files(dir).with_context(|| format!("cannot read the plugins in {}", dir.display()))?,
            ),
            None => {
                let files: Vec<PluginFile> = viaduct_bundle::plugins()
                    .iter()
                    .map(|f| PluginFile { name: format!("embedded:{}", f.path), bytes: Cow::Borrowed(f.bytes) })
                    .collect();
                if files.is_empty() {
                    tracing::info!("no first-party plugins: this build embeds none and --plugins-dir is not given");
                    return Ok(Vec::new());
                }
                ("embedded in this build".to_string(), files)
            }
        };
        let published =
            self.publish_files(files).await.with_context(|| format!("cannot publish the plugins ({source})"))?;
        let names: Vec<String> =
            published.iter().filter_map(|p| p.manifest.as_ref().map(|m| format!("{}@{}", m.name, m.version))).collect();
        tracing::info!(plugins = %names.join(" "), %source, "first-party plugins published");
        Ok(published)
    }

    /// Publishes every `NAME.wasm` of `files` with its `NAME.toml` (the
    /// first-party plugins shipped with the server), replacing versions
    /// whose bytes changed. Each goes through [`Self::publish`]: the same
    /// manifest and component checks as any other.
    pub async fn publish_files(&self, mut files: Vec<PluginFile>) -> Result<Vec<Plugin>> {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut published = Vec::new();
        for wasm in files.iter().filter(|f| f.name.ends_with(".wasm")) {
            let toml_name = format!("{}.toml", wasm.name.trim_end_matches(".wasm"));
            let toml = files
                .iter()
                .find(|f| f.name == toml_name)
                .ok_or_else(|| Error::Internal(format!("{} has no manifest {toml_name}", wasm.name)))?;
            let text = std::str::from_utf8(&toml.bytes)
                .map_err(|e| Error::invalid(format!("{toml_name} is not UTF-8: {e}")))?;
            let blob = self.blobs.put(&wasm.bytes).await?;
            published.push(self.publish(&toml_name, text, &blob, true).await?);
        }
        Ok(published)
    }

    /// Every version of `name` (all plugins when empty): by name, newest
    /// version first.
    pub fn list(&self, name: &str) -> Result<Vec<Plugin>> {
        let prefix = if name.is_empty() { Vec::new() } else { key(name, "") };
        let mut out = Vec::new();
        for item in self.store.tree(T::Plugins).scan_prefix(&prefix) {
            let (_, v) = item?;
            let rec: PluginRecord = crate::store::decode(T::Plugins, &v)?;
            out.extend(rec.plugin);
        }
        let version = |p: &Plugin| p.manifest.as_ref().and_then(|m| Version::parse(&m.version).ok());
        let name_of = |p: &Plugin| p.manifest.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        out.sort_by(|a, b| name_of(a).cmp(&name_of(b)).then_with(|| version(b).cmp(&version(a))));
        Ok(out)
    }

    /// The newest version of `name` matching the pipeline requirement
    /// `version` (see [`requirement`]); `None` when there is none.
    pub fn resolve(&self, name: &str, version: &str) -> Result<Option<Plugin>> {
        let req = requirement(version)?;
        let best = self
            .list(name)?
            .into_iter()
            .filter_map(|p| {
                let v = Version::parse(&p.manifest.as_ref()?.version).ok()?;
                req.matches(&v).then_some((v, p))
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        Ok(best.map(|(_, p)| p))
    }

    /// `NAME`, `NAME@1`, `NAME@1.2` or `NAME@1.2.3`, resolved.
    pub fn get(&self, reference: &str) -> Result<Plugin> {
        let (name, version) = reference.split_once('@').unwrap_or((reference, ""));
        self.resolve(name, version)?.ok_or_else(|| match self.list(name) {
            Ok(all) if !all.is_empty() => {
                let versions: Vec<String> =
                    all.iter().filter_map(|p| p.manifest.as_ref().map(|m| m.version.clone())).collect();
                Error::not_found(format!(
                    "no published version of `{name}` matches `{version}` (published: {})",
                    versions.join(", ")
                ))
            }
            _ => Error::not_found(format!("no plugin `{name}` is published")),
        })
    }

    /// Whether `digest` was ever published (runners may fetch it).
    pub fn is_published(&self, digest: &str) -> Result<bool> {
        self.store.tree(T::PluginBlobs).contains_key(digest.as_bytes())
    }

    /// Every component digest the registry keeps (for the blob sweep).
    pub fn digests(&self) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for item in self.store.tree(T::PluginBlobs).iter() {
            let (k, _) = item?;
            out.insert(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_follow_the_pipeline_rules() {
        let m = |req: &str, v: &str| requirement(req).unwrap().matches(&Version::parse(v).unwrap());
        assert!(m("1", "1.9.2") && !m("1", "2.0.0"));
        assert!(m("1.2", "1.2.7") && !m("1.2", "1.3.0"));
        assert!(m("1.2.3", "1.2.3") && !m("1.2.3", "1.2.4"));
        assert!(m("", "7.0.0"));
        assert!(!m("1", "1.3.0-beta.1"), "pre-releases only when named exactly");
        assert!(m("1.3.0-beta.1", "1.3.0-beta.1"));
    }
}
