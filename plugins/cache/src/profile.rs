//! Per-ecosystem defaults: key prefix, key files and cached paths.
//!
//! Everything is workspace-relative and rooted at the detected project's
//! directory (a `web/package.json` gives `web/node_modules`). Tool caches
//! that live outside the workspace by default (Cargo's registry, Go's module
//! cache, pip's download cache) are cached only when their environment
//! variable points into the workspace — the sandbox cannot see anything
//! else, and neither can the host's cache import.
//!
//! | ecosystem | key prefix | key files | paths |
//! |---|---|---|---|
//! | rust | `cargo` | `Cargo.lock` (else `Cargo.toml`), `rust-toolchain(.toml)` | `target` (or `$CARGO_TARGET_DIR`), `$CARGO_HOME/registry` and `/git` (else `.cargo/registry` and `.cargo/git`) |
//! | node | `npm`/`yarn`/`pnpm`/`bun` | the package manager's lockfile (else `package.json`) | `node_modules`, plus its download cache when its variable points into the workspace |
//! | python | `pip`/`uv`/`poetry`/`pdm`/`pipenv` | the lockfile, or `requirements*.txt` (else `pyproject.toml`/`setup.py`/`setup.cfg`) | `.venv`, plus the tool's cache directory (pip: `$PIP_CACHE_DIR`, else `.pip-cache`) |
//! | go | `go` | `go.sum` (else `go.mod`) | `$GOMODCACHE` (else `$GOPATH/pkg/mod`, else `.go/pkg/mod`), `$GOCACHE` (else `.go/cache`) |

use std::path::PathBuf;

use viaduct_plugin_common::detect::{Detection, ProjectType};

/// What the cache plugin uses when the step does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The ecosystem (`rust`, `node`, …).
    pub ecosystem: &'static str,
    /// Key prefix.
    pub prefix: String,
    /// Files whose content keys the cache (literal paths that exist, or
    /// glob patterns).
    pub key_files: Vec<String>,
    /// Workspace-relative paths to cache.
    pub paths: Vec<String>,
    /// Things worth telling the pipeline author (logged at info level).
    pub notes: Vec<String>,
}

/// The ecosystems the cache plugin has defaults for.
pub const CACHEABLE: [ProjectType; 4] = [ProjectType::Rust, ProjectType::Node, ProjectType::Python, ProjectType::Go];

/// How the defaults see the workspace: whether a path exists, and where an
/// environment variable's path is inside the workspace (`None` when unset
/// or outside).
pub trait Workspace {
    /// Whether the workspace-relative `path` exists.
    fn exists(&self, path: &str) -> bool;
    /// Workspace-relative path held by the variable `name`, when it points
    /// into the workspace (and is not the workspace itself).
    fn env_path(&self, name: &str) -> Option<String>;
    /// Existing files matching a glob pattern, sorted.
    fn glob(&self, pattern: &str) -> Vec<String>;
}

/// Defaults for a detected project; `None` for a type without a profile.
pub fn defaults(d: &Detection, ws: &dyn Workspace) -> Option<Defaults> {
    let mut notes = Vec::new();
    let existing = |names: &[&str]| -> Vec<String> {
        names.iter().map(|n| d.join(n)).filter(|p| ws.exists(p)).collect::<Vec<_>>()
    };
    let first_existing = |lockfiles: &[&str], fallback: &[&str], notes: &mut Vec<String>| -> Vec<String> {
        let found = existing(lockfiles);
        if !found.is_empty() {
            return found;
        }
        let found = existing(fallback);
        if !found.is_empty() {
            notes.push(format!(
                "no lockfile ({}): keying the cache on {}",
                lockfiles.join(", "),
                found.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        found
    };
    let defaults = match d.kind {
        ProjectType::Rust => {
            let mut key_files = first_existing(&["Cargo.lock"], &["Cargo.toml"], &mut notes);
            key_files.extend(existing(&["rust-toolchain.toml", "rust-toolchain"]));
            let mut paths = Vec::new();
            match ws.env_path("CARGO_TARGET_DIR") {
                Some(target) => paths.push(target),
                None => paths.push(d.join("target")),
            }
            // Missing paths are skipped when saving, so the registry is
            // cached whenever it exists after the job.
            let home = ws.env_path("CARGO_HOME").unwrap_or_else(|| {
                notes.push(
                    "CARGO_HOME does not point into the workspace: caching `.cargo/registry` and `.cargo/git` \
                     if they exist after the job (export CARGO_HOME=$VIADUCT_WORKSPACE/.cargo for cargo to use them)"
                        .to_owned(),
                );
                ".cargo".to_owned()
            });
            paths.push(format!("{home}/registry"));
            paths.push(format!("{home}/git"));
            Defaults { ecosystem: "rust", prefix: "cargo".to_owned(), key_files, paths, notes }
        }
        ProjectType::Node => {
            let pm = d.detail("package_manager").unwrap_or("npm");
            let (lockfiles, cache_var): (&[&str], &str) = match pm {
                "yarn" => (&["yarn.lock"], "YARN_CACHE_FOLDER"),
                "pnpm" => (&["pnpm-lock.yaml"], "npm_config_store_dir"),
                "bun" => (&["bun.lock", "bun.lockb"], "BUN_INSTALL_CACHE_DIR"),
                _ => (&["package-lock.json", "npm-shrinkwrap.json"], "npm_config_cache"),
            };
            let key_files = first_existing(lockfiles, &["package.json"], &mut notes);
            let mut paths = vec![d.join("node_modules")];
            paths.extend(ws.env_path(cache_var));
            Defaults { ecosystem: "node", prefix: pm.to_owned(), key_files, paths, notes }
        }
        ProjectType::Python => {
            let pm = d.detail("package_manager").unwrap_or("pip");
            let fallback = ["pyproject.toml", "setup.py", "setup.cfg"];
            let key_files = match pm {
                "uv" => first_existing(&["uv.lock"], &fallback, &mut notes),
                "poetry" => first_existing(&["poetry.lock"], &fallback, &mut notes),
                "pdm" => first_existing(&["pdm.lock"], &fallback, &mut notes),
                "pipenv" => first_existing(&["Pipfile.lock"], &["Pipfile"], &mut notes),
                _ => {
                    let reqs = ws.glob(&d.join("requirements*.txt"));
                    if reqs.is_empty() { first_existing(&[], &fallback, &mut notes) } else { reqs }
                }
            };
            let mut paths = vec![d.join(".venv")];
            let cache_var = match pm {
                "uv" => "UV_CACHE_DIR",
                "poetry" => "POETRY_CACHE_DIR",
                "pdm" => "PDM_CACHE_DIR",
                _ => "PIP_CACHE_DIR",
            };
            match ws.env_path(cache_var) {
                Some(dir) => paths.push(dir),
                None if cache_var == "PIP_CACHE_DIR" => paths.push(".pip-cache".to_owned()),
                None => {}
            }
            Defaults { ecosystem: "python", prefix: pm.to_owned(), key_files, paths, notes }
        }
        ProjectType::Go => {
            let key_files = first_existing(&["go.sum"], &["go.mod"], &mut notes);
            let modcache = ws
                .env_path("GOMODCACHE")
                .or_else(|| ws.env_path("GOPATH").map(|p| format!("{p}/pkg/mod")))
                .unwrap_or_else(|| {
                    notes.push(
                        "GOMODCACHE does not point into the workspace: caching `.go/pkg/mod` if it exists after \
                         the job (export GOMODCACHE=$VIADUCT_WORKSPACE/.go/pkg/mod for go to use it)"
                            .to_owned(),
                    );
                    ".go/pkg/mod".to_owned()
                });
            let buildcache = ws.env_path("GOCACHE").unwrap_or_else(|| {
                notes.push(
                    "GOCACHE does not point into the workspace: caching `.go/cache` if it exists after the job \
                     (export GOCACHE=$VIADUCT_WORKSPACE/.go/cache for go to use it)"
                        .to_owned(),
                );
                ".go/cache".to_owned()
            });
            Defaults { ecosystem: "go", prefix: "go".to_owned(), key_files, paths: vec![modcache, buildcache], notes }
        }
        _ => return None,
    };
    Some(defaults)
}

/// The [`Workspace`] of a running plugin: the current directory (the
/// workspace) and the step's granted environment.
pub struct Sandbox<'a> {
    /// Resolves environment values into the workspace
    /// ([`viaduct_plugin_sdk::Context::workspace_relative`]).
    pub ctx: &'a viaduct_plugin_sdk::Context,
    /// The workspace root as a path for `std::fs` (`.` in the sandbox).
    pub root: PathBuf,
}

impl Workspace for Sandbox<'_> {
    fn exists(&self, path: &str) -> bool {
        self.root.join(path).exists()
    }

    fn env_path(&self, name: &str) -> Option<String> {
        let value = self.ctx.env(name).filter(|v| !v.is_empty())?;
        let rel = self.ctx.workspace_relative(value)?;
        let rel = rel.to_str()?.to_owned();
        (!rel.is_empty()).then_some(rel)
    }

    fn glob(&self, pattern: &str) -> Vec<String> {
        crate::key::glob_files(&self.root, pattern).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use viaduct_plugin_common::detect::detect_files;

    use super::*;

    #[derive(Default)]
    struct Fake {
        files: BTreeSet<String>,
        env: BTreeMap<&'static str, &'static str>,
    }

    impl Workspace for Fake {
        fn exists(&self, path: &str) -> bool {
            self.files.iter().any(|f| f == path || f.starts_with(&format!("{path}/")))
        }
        fn env_path(&self, name: &str) -> Option<String> {
            self.env.get(name).map(|s| (*s).to_owned())
        }
        fn glob(&self, pattern: &str) -> Vec<String> {
            let (prefix, suffix) = pattern.split_once('*').unwrap();
            self.files.iter().filter(|f| f.starts_with(prefix) && f.ends_with(suffix)).cloned().collect()
        }
    }

    fn for_files(files: &[&str], env: &[(&'static str, &'static str)]) -> Defaults {
        let ws = Fake { files: files.iter().map(|s| (*s).to_owned()).collect(), env: env.iter().copied().collect() };
        let list: Vec<String> = ws.files.iter().cloned().collect();
        let found = detect_files(&list);
        defaults(&found[0], &ws).expect("a profile")
    }

    #[test]
    fn rust() {
        let d = for_files(&["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"], &[]);
        assert_eq!(d.prefix, "cargo");
        assert_eq!(d.key_files, ["Cargo.lock", "rust-toolchain.toml"]);
        assert_eq!(d.paths, ["target", ".cargo/registry", ".cargo/git"]);
        assert_eq!(d.notes.len(), 1, "suggests CARGO_HOME");

        let d = for_files(&["Cargo.toml"], &[]);
        assert_eq!(d.key_files, ["Cargo.toml"]);
        assert!(d.notes[0].starts_with("no lockfile (Cargo.lock): keying the cache on `Cargo.toml`"));

        let d = for_files(&["Cargo.toml"], &[("CARGO_HOME", "ci/cargo"), ("CARGO_TARGET_DIR", "out")]);
        assert_eq!(d.paths, ["out", "ci/cargo/registry", "ci/cargo/git"]);
        assert!(d.notes.len() == 1 && d.notes[0].starts_with("no lockfile"));
    }

    #[test]
    fn node_in_a_subdirectory() {
        let d = for_files(&["web/package.json", "web/pnpm-lock.yaml"], &[("npm_config_store_dir", ".pnpm-store")]);
        assert_eq!((d.ecosystem, d.prefix.as_str()), ("node", "pnpm"));
        assert_eq!(d.key_files, ["web/pnpm-lock.yaml"]);
        assert_eq!(d.paths, ["web/node_modules", ".pnpm-store"]);
        let d = for_files(&["package.json"], &[]);
        assert_eq!((d.prefix.as_str(), d.key_files.as_slice()), ("npm", &["package.json".to_string()][..]));
    }

    #[test]
    fn python() {
        let d = for_files(&["requirements.txt", "requirements-dev.txt", "setup.py"], &[]);
        assert_eq!(d.prefix, "pip");
        assert_eq!(d.key_files, ["requirements-dev.txt", "requirements.txt"]);
        assert_eq!(d.paths, [".venv", ".pip-cache"]);
        let d = for_files(&["pyproject.toml", "uv.lock"], &[("UV_CACHE_DIR", ".uv")]);
        assert_eq!((d.prefix.as_str(), d.key_files[0].as_str()), ("uv", "uv.lock"));
        assert_eq!(d.paths, [".venv", ".uv"]);
        let d = for_files(&["pyproject.toml", "poetry.lock"], &[]);
        assert_eq!(d.paths, [".venv"]);
    }

    #[test]
    fn go() {
        let d = for_files(&["go.mod", "go.sum"], &[("GOMODCACHE", ".gomod"), ("GOCACHE", ".gocache")]);
        assert_eq!(
            (d.key_files.as_slice(), d.paths.as_slice()),
            (&["go.sum".to_string()][..], &[".gomod".to_string(), ".gocache".to_string()][..])
        );
        assert!(d.notes.is_empty());
        let d = for_files(&["go.mod"], &[("GOPATH", "gopath")]);
        assert_eq!(d.paths, ["gopath/pkg/mod", ".go/cache"]);
        assert_eq!(d.notes.len(), 2);
    }

    #[test]
    fn no_profile_for_other_types() {
        let ws = Fake::default();
        let found = detect_files(&["flake.nix".to_owned()]);
        assert_eq!(defaults(&found[0], &ws), None);
    }
}
