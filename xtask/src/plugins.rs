//! `cargo xtask plugins`: builds the WASI step plugins.
//!
//! Every directory with a `plugin.toml` under `plugins/` is a plugin crate:
//! `plugins/<dir>/` are first-party plugins, `plugins/testing/<dir>/` are
//! test-only ones (published by the end-to-end tests, never shipped). All
//! are built in one cargo invocation for `wasm32-wasip2` with the
//! `[profile.plugin]` of the root Cargo.toml, into the shared target
//! directory, then copied with their manifests to
//!
//! - `target/plugins/<name>.wasm` and `<name>.toml` (first-party),
//! - `target/plugins-test/<name>.wasm` and `<name>.toml` (test-only),
//!
//! named by the manifest's `name` (what `uses:` refers to). When every
//! copied component is newer than every source (the SDK, the WIT, the
//! plugins, the root Cargo.toml and Cargo.lock), the build is skipped.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run, target_dir};

/// The target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";
/// The cargo profile plugins are built with.
pub const PROFILE: &str = "plugin";

/// A plugin crate.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The manifest's `name` (what pipelines `uses:`).
    pub name: String,
    /// The cargo package.
    pub package: String,
    /// Its directory.
    pub dir: PathBuf,
    /// A test-only plugin (`plugins/testing/…`).
    pub test_only: bool,
}

impl Plugin {
    /// Where cargo writes the component.
    pub fn built(&self) -> PathBuf {
        target_dir().join(TARGET).join(PROFILE).join(format!("{}.wasm", self.package.replace('-', "_")))
    }

    /// Where `cargo xtask plugins` copies it.
    pub fn output(&self) -> PathBuf {
        output_dir(self.test_only).join(format!("{}.wasm", self.name))
    }
}

/// `target/plugins` (first-party) or `target/plugins-test` (test-only).
pub fn output_dir(test_only: bool) -> PathBuf {
    target_dir().join(if test_only { "plugins-test" } else { "plugins" })
}

/// Every plugin crate under `plugins/`, first-party first, by name.
pub fn discover() -> Result<Vec<Plugin>> {
    let mut plugins = Vec::new();
    for (dir, test_only) in [(root().join("plugins"), false), (root().join("plugins").join("testing"), true)] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("plugin.toml").is_file() && p.join("Cargo.toml").is_file())
            .collect();
        entries.sort();
        for path in entries {
            let name = string_at(&path.join("plugin.toml"), &["name"])?;
            let package = string_at(&path.join("Cargo.toml"), &["package", "name"])?;
            plugins.push(Plugin { name, package, dir: path, test_only });
        }
    }
    if let Some(dup) = plugins.iter().enumerate().find_map(|(i, p)| plugins[..i].iter().find(|q| q.name == p.name)) {
        bail!("two plugins are named `{}` ({} and another)", dup.name, dup.dir.display());
    }
    Ok(plugins)
}

/// The string at `keys` (a path of tables) in the TOML file `path`.
fn string_at(path: &Path, keys: &[&str]) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut value: Option<&toml::Value> = None;
    for (i, k) in keys.iter().enumerate() {
        value = if i == 0 { table.get(*k) } else { value.and_then(|v| v.get(k)) };
    }
    value
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{} has no `{}`", path.display(), keys.join(".")))
}

/// Newest modification time of the files under `path` (skipping `target`
/// directories and the SDK's template).
fn newest(path: &Path, newest_so_far: &mut SystemTime) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.is_dir() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == "target" || path.ends_with("sdk/plugin/template") {
            return;
        }
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            newest(&entry.path(), newest_so_far);
        }
    } else if let Ok(t) = meta.modified() {
        *newest_so_far = (*newest_so_far).max(t);
    }
}

fn up_to_date(plugins: &[Plugin]) -> bool {
    let mut sources = SystemTime::UNIX_EPOCH;
    for p in ["plugins", "sdk/plugin", "Cargo.toml", "Cargo.lock"] {
        newest(&root().join(p), &mut sources);
    }
    plugins.iter().all(|p| {
        let built = |f: PathBuf| std::fs::metadata(f).and_then(|m| m.modified()).is_ok_and(|t| t > sources);
        built(p.output()) && built(output_dir(p.test_only).join(format!("{}.toml", p.name)))
    })
}

/// Builds (when needed) and copies every plugin; returns them.
pub fn build(force: bool) -> Result<Vec<Plugin>> {
    crate::setup::wasm_target(TARGET)?;
    let plugins = discover()?;
    if !force && up_to_date(&plugins) {
        eprintln!("xtask: plugins are up to date (--force rebuilds)");
    } else {
        let mut cmd = cargo();
        cmd.args(["build", "--target", TARGET, "--profile", PROFILE]);
        for p in &plugins {
            cmd.args(["-p", &p.package]);
        }
        run(&mut cmd)?;
        for test_only in [false, true] {
            std::fs::create_dir_all(output_dir(test_only))?;
        }
        for p in &plugins {
            std::fs::copy(p.built(), p.output())
                .with_context(|| format!("cannot copy {} to {}", p.built().display(), p.output().display()))?;
            let manifest = output_dir(p.test_only).join(format!("{}.toml", p.name));
            std::fs::copy(p.dir.join("plugin.toml"), &manifest)?;
        }
    }
    println!("{:<12} {:<12} {:>10}  component", "plugin", "kind", "size");
    for p in &plugins {
        let size = std::fs::metadata(p.output()).map(|m| m.len()).unwrap_or(0);
        let kind = if p.test_only { "test-only" } else { "first-party" };
        let shown = p.output().strip_prefix(root()).map(Path::to_path_buf).unwrap_or_else(|_| p.output());
        println!("{:<12} {kind:<12} {:>8.1} K  {}", p.name, size as f64 / 1024.0, shown.display());
    }
    Ok(plugins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_the_plugins() {
        let plugins = discover().unwrap();
        let first: Vec<&str> = plugins.iter().filter(|p| !p.test_only).map(|p| p.name.as_str()).collect();
        let test: Vec<&str> = plugins.iter().filter(|p| p.test_only).map(|p| p.name.as_str()).collect();
        assert_eq!(first, ["cache", "container-deploy", "deploy", "detect", "nix-check", "ssh-deploy"]);
        assert_eq!(test, ["hostile", "noop", "probe"]);
        assert!(plugins.iter().all(|p| p.package.starts_with("viaduct-plugin-")));
    }
}
