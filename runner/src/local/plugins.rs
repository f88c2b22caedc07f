//! The plugins of a local run: `<name>.toml` manifests and `<name>.wasm`
//! components from `--plugins-dir`, else the set embedded in the binary at
//! build time — what `uses: name@1` resolves against instead of a server's
//! registry.
//!
//! Only what a run needs is read from a manifest (name, version, post
//! phase, capabilities, inputs); the server checks the rest when a plugin
//! is published. `uses:` is resolved and checked as the server does
//! (unknown plugins or versions, unknown or missing inputs, ungrantable
//! network access are `file:line:column` diagnostics at the step).

use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Deserialize;
use viaduct_pipeline::{Diagnostic, plan::StepAction, spec::Pipeline};
use viaduct_proto::v1::{PluginCapabilities, PluginManifest, PluginParam};

/// One plugin: its manifest and component.
#[derive(Debug, Clone)]
pub struct LocalPlugin {
    /// The manifest.
    pub manifest: PluginManifest,
    /// `blake3:<hex>` of the component.
    pub digest: String,
    /// The component.
    pub wasm: Arc<[u8]>,
}

/// The plugins a local run may use.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    plugins: Vec<LocalPlugin>,
    /// Where they came from (for messages).
    pub origin: String,
}

#[derive(Deserialize)]
struct Raw {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    abi: String,
    #[serde(default)]
    post: bool,
    #[serde(default)]
    post_if: String,
    #[serde(default)]
    capabilities: RawCaps,
    #[serde(default)]
    inputs: HashMap<String, RawParam>,
    #[serde(default)]
    outputs: HashMap<String, RawParam>,
}

#[derive(Deserialize, Default)]
struct RawCaps {
    #[serde(default)]
    network: bool,
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default)]
    mounts: Vec<String>,
    #[serde(default)]
    memory_mb: u32,
}

#[derive(Deserialize)]
struct RawParam {
    #[serde(default)]
    description: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: Option<toml::Value>,
}

fn params(raw: HashMap<String, RawParam>) -> HashMap<String, PluginParam> {
    raw.into_iter()
        .map(|(k, p)| {
            let default_json = p.default.map(|d| serde_json::to_string(&d).unwrap_or_default()).unwrap_or_default();
            (k, PluginParam { description: p.description, required: p.required, default_json })
        })
        .collect()
}

/// Parses the parts of a manifest a run needs.
pub fn manifest(text: &str) -> Result<PluginManifest, String> {
    let raw: Raw = toml::from_str(text).map_err(|e| e.message().trim_end().to_string())?;
    semver::Version::parse(&raw.version)
        .map_err(|e| format!("`{}` is not a semantic version such as 1.2.3: {e}", raw.version))?;
    Ok(PluginManifest {
        name: raw.name,
        version: raw.version,
        abi: raw.abi,
        description: raw.description,
        post: raw.post,
        post_if: raw.post_if.trim().to_string(),
        capabilities: Some(PluginCapabilities {
            network: raw.capabilities.network,
            exec: raw.capabilities.exec,
            mounts: raw.capabilities.mounts,
            memory_mb: raw.capabilities.memory_mb,
        }),
        inputs: params(raw.inputs),
        outputs: params(raw.outputs),
    })
}

/// What `uses: name@version` asks for: the server's rule
/// ([`viaduct_sdk::planned::version_requirement`]).
fn requirement(version: &str) -> Option<semver::VersionReq> {
    semver::VersionReq::parse(&viaduct_sdk::planned::version_requirement(version)).ok()
}

impl Catalog {
    /// The plugins of `files` (path, bytes): `<name>.toml` with its
    /// `<name>.wasm`.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        origin: String,
    ) -> Result<Self, String> {
        let files: HashMap<&str, &[u8]> = files.into_iter().collect();
        let mut plugins = Vec::new();
        let mut names: Vec<&&str> = files.keys().filter(|p| p.ends_with(".toml")).collect();
        names.sort();
        for toml_path in names {
            let stem = toml_path.trim_end_matches(".toml");
            let Some(wasm) = files.get(format!("{stem}.wasm").as_str()) else { continue };
            let text = std::str::from_utf8(files[*toml_path]).map_err(|_| format!("{toml_path}: not UTF-8"))?;
            let manifest = manifest(text).map_err(|e| format!("{origin}/{toml_path}: {e}"))?;
            let digest = format!("blake3:{}", blake3::hash(wasm).to_hex());
            plugins.push(LocalPlugin { manifest, digest, wasm: Arc::from(*wasm) });
        }
        Ok(Self { plugins, origin })
    }

    /// The plugins in `dir` (`cargo xtask plugins` writes `target/plugins`).
    pub fn from_dir(dir: &Path) -> Result<Self, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("--plugins-dir {}: {e}", dir.display()))?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") || name.ends_with(".wasm") {
                let bytes = std::fs::read(e.path()).map_err(|err| format!("{}: {err}", e.path().display()))?;
                files.push((name, bytes));
            }
        }
        Self::from_files(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())), dir.display().to_string())
    }

    /// No plugins (`origin` says why).
    pub fn empty(origin: impl Into<String>) -> Self {
        Self { plugins: Vec::new(), origin: origin.into() }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The newest plugin `name` matching `version` (`uses: name@version`).
    pub fn resolve(&self, name: &str, version: &str) -> Option<&LocalPlugin> {
        let req = requirement(version)?;
        self.plugins
            .iter()
            .filter(|p| p.manifest.name == name)
            .filter_map(|p| Some((semver::Version::parse(&p.manifest.version).ok()?, p)))
            .filter(|(v, _)| req.matches(v))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, p)| p)
    }

    /// Components by digest (for the plugin host).
    pub fn components(&self) -> HashMap<String, Arc<[u8]>> {
        self.plugins.iter().map(|p| (p.digest.clone(), Arc::clone(&p.wasm))).collect()
    }

    /// Every problem with the `uses:` of `pipeline`, as the server finds
    /// them when it plans a run.
    pub fn check(&self, pipeline: &Pipeline) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        let mut diag = |pos, message: String| diags.push(Diagnostic::new(&pipeline.file, pos, message));
        for step in pipeline.jobs.iter().flat_map(|j| j.steps.iter()) {
            let StepAction::Uses { plugin, version, with, allow_network } = &step.action else { continue };
            let wanted = if version.is_empty() { plugin.clone() } else { format!("{plugin}@{version}") };
            let Some(found) = self.resolve(plugin, version) else {
                let known: Vec<String> =
                    self.plugins.iter().map(|p| format!("{}@{}", p.manifest.name, p.manifest.version)).collect();
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                diag(
                    step.action_pos,
                    format!(
                        "plugin `{wanted}` is not among the local plugins ({}: {known}); build them with `cargo \
                         xtask plugins` and pass --plugins-dir target/plugins",
                        self.origin
                    ),
                );
                continue;
            };
            let m = &found.manifest;
            let exact = format!("{}@{}", m.name, m.version);
            let mut inputs: Vec<&str> = m.inputs.keys().map(String::as_str).collect();
            inputs.sort_unstable();
            for key in with.keys() {
                if !m.inputs.contains_key(key) {
                    let pos = step.with_pos.get(key).copied().unwrap_or(step.action_pos);
                    let known = if inputs.is_empty() { "none".to_string() } else { inputs.join(", ") };
                    let hint = viaduct_pipeline::suggestion(key, inputs.iter().copied());
                    diag(pos, format!("`{key}` is not an input of {exact} (inputs: {known}){hint}"));
                }
            }
            for name in inputs.iter().filter(|n| m.inputs[**n].required && !with.contains_key(**n)) {
                diag(step.action_pos, format!("{exact} needs the input `{name}` (under `with:`)"));
            }
            if *allow_network && !m.capabilities.as_ref().is_some_and(|c| c.network) {
                diag(step.action_pos, format!("{exact} does not use the network: `allow.network` cannot be granted"));
            }
        }
        diags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DETECT: &str = "name = \"detect\"\nversion = \"1.2.0\"\nabi = \"1.0\"\n\n[inputs.depth]\nrequired = \
                          false\ndefault = 2\n\n[outputs.types]\ndescription = \"types\"\n";

    #[test]
    fn resolves_versions_as_the_server_does_and_checks_inputs() {
        let files = [("detect.toml", DETECT.as_bytes()), ("detect.wasm", b"\0asm".as_slice()), ("lone.toml", b"x")];
        let c = Catalog::from_files(files, "test".into()).unwrap();
        let p = c.resolve("detect", "1").expect("detect@1");
        assert_eq!(p.manifest.version, "1.2.0");
        assert_eq!(p.manifest.inputs["depth"].default_json, "2");
        assert_eq!(p.digest, format!("blake3:{}", blake3::hash(b"\0asm").to_hex()));
        assert!(c.resolve("detect", "1.2").is_some() && c.resolve("detect", "").is_some());
        assert!(c.resolve("detect", "2").is_none() && c.resolve("detect", "1.3").is_none());
        assert_eq!(c.components().len(), 1, "a manifest without its component is not a plugin");

        let yaml = "jobs:\n  j:\n    steps:\n      - uses: detect@1\n        with:\n          dpeth: 1\n      - uses: \
                    cache@1\n";
        let pipeline = viaduct_pipeline::parse("p.yml", yaml).unwrap();
        let diags: Vec<String> = c.check(&pipeline).iter().map(ToString::to_string).collect();
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags[0].starts_with("p.yml:6:11: `dpeth` is not an input of detect@1.2.0"), "{diags:?}");
        assert!(diags[1].starts_with("p.yml:7:15: plugin `cache@1` is not among the local plugins"), "{diags:?}");
    }
}
