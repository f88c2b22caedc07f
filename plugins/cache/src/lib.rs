//! `cache`: restore build caches keyed by lockfiles, and save them after
//! the job.
//!
//! ```yaml
//! - id: cache
//!   uses: cache@1          # a Rust workspace: key cargo-<hash of Cargo.lock>, caches target/
//! - run: cargo build --locked
//! ```
//!
//! **Main phase:** works out the key — `<key>-<first 16 hex digits of the
//! blake3 digest of key_files>` — and restores the entry saved under it or,
//! failing that, the newest entry whose key starts with one of
//! `restore_keys` (default `<key>-`, i.e. any earlier state of this cache).
//! Unless the exact key was restored (or `save: false`), it asks for a post
//! phase.
//!
//! **Post phase** (after the job's last step): saves `paths` under the key.
//! Entries are immutable, so a key that already exists is kept as it is.
//!
//! Without `key`, `key_files` or `paths`, the defaults come from the
//! project type detected in the workspace (see [`profile`]). Cache
//! problems on the host (storage down, entry too large) are warnings
//! unless `strict: true`: a cache only makes a build faster. Mistakes in
//! the step's inputs (a key file that does not exist) always fail.

#![warn(missing_docs)]

pub mod key;
pub mod profile;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use viaduct_plugin_common::detect::{self, ProjectType};
use viaduct_plugin_sdk::{
    cache::{self, Hit},
    fs::workspace_path,
    markdown::{Table, bytes, code},
    prelude::*,
};

use crate::profile::{CACHEABLE, Defaults, Sandbox};

/// The `with:` inputs (decode with [`Context::with`]).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// Key prefix (default: per ecosystem, e.g. `cargo`).
    #[serde(default, deserialize_with = "de::opt_string")]
    key: Option<String>,
    /// Files (or glob patterns) whose contents key the cache; `[]` for a
    /// fixed key.
    #[serde(default, deserialize_with = "de::opt_list")]
    key_files: Option<Vec<String>>,
    /// Workspace-relative paths to cache.
    #[serde(default, deserialize_with = "de::opt_list")]
    paths: Option<Vec<String>>,
    /// Key prefixes to fall back on, in order (default `<key>-`).
    #[serde(default, deserialize_with = "de::opt_list")]
    restore_keys: Option<Vec<String>>,
    /// Save in the post phase (default true).
    #[serde(default, deserialize_with = "de::opt_bool")]
    save: Option<bool>,
    /// The ecosystem whose defaults to use (`rust`, `node`, `python`, `go`)
    /// instead of the detected one.
    #[serde(default, deserialize_with = "de::opt_string")]
    ecosystem: Option<String>,
    /// Fail the step when the host cannot restore or save (default false:
    /// a warning).
    #[serde(default, deserialize_with = "de::opt_bool")]
    strict: Option<bool>,
}

/// What the main phase hands to the post phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The full key to save under.
    pub key: String,
    /// Workspace-relative paths to save.
    pub paths: Vec<String>,
    /// Whether a failed save fails the step.
    #[serde(default)]
    pub strict: bool,
}

/// The cache settings of a step, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The ecosystem the defaults came from, if any.
    pub ecosystem: Option<&'static str>,
    /// Key prefix.
    pub prefix: String,
    /// Key files (`None`: a fixed key, the prefix alone).
    pub key_files: Option<Vec<String>>,
    /// Paths to cache.
    pub paths: Vec<String>,
    /// Fallback prefixes.
    pub restore_keys: Vec<String>,
    /// Save in the post phase.
    pub save: bool,
    /// Host errors fail the step.
    pub strict: bool,
    /// Notes on the defaults, for the log.
    pub notes: Vec<String>,
}

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    if ctx.is_post() {
        return post(&ctx);
    }
    let with: With = ctx.with()?;
    let root = PathBuf::from(".");
    let plan = plan(with, || {
        let found = detect::detect(&root, 2).context("cannot scan the workspace")?;
        let ws = Sandbox { ctx: &ctx, root: root.clone() };
        Ok((found, ws))
    })?;
    for note in &plan.notes {
        ctx.info(note);
    }
    let (key, key_files) = match &plan.key_files {
        Some(entries) => {
            let resolved = key::resolve(&root, entries)?;
            for pattern in &resolved.unmatched {
                ctx.warn(format!("key file pattern `{pattern}` matches no file"));
            }
            let digest = key::digest(&root, &resolved.files).context("cannot read the key files")?;
            (key::full_key(&plan.prefix, &digest), resolved.files)
        }
        None => (plan.prefix.clone(), Vec::new()),
    };
    ctx.info(format!("cache key `{key}` (from {})", describe_files(&key_files)));
    ctx.info(format!("paths: {}", plan.paths.join(", ")));

    let hit = match cache::restore(&key, &plan.restore_keys) {
        Ok(hit) => hit,
        Err(e) if !plan.strict => {
            ctx.warn(format!("{e} (continuing without a cache)"));
            None
        }
        Err(e) => return Err(e),
    };
    match &hit {
        Some(h) if h.exact => ctx.info(format!("restored `{}` ({})", h.key, bytes(h.size))),
        Some(h) => ctx.info(format!("restored `{}` ({}), a fallback for `{key}`", h.key, bytes(h.size))),
        None => ctx.info(format!("no cache for `{key}`")),
    }
    let exact = hit.as_ref().is_some_and(|h| h.exact);
    let mut out = Output::new()
        .set("hit", exact)
        .set("restored", hit.is_some())
        .set("key", &key)
        .set("matched_key", hit.as_ref().map_or("", |h| h.key.as_str()));
    let will_save = plan.save && !exact;
    if will_save {
        out = out.post_state_json(&State { key: key.clone(), paths: plan.paths.clone(), strict: plan.strict })?;
    }
    Ok(out.summary(main_summary(&plan, &key, &key_files, hit.as_ref(), will_save)))
}

/// Applies the defaults. `detect` is called only when a default is needed.
pub fn plan<W: profile::Workspace>(
    with: With,
    detect: impl FnOnce() -> Result<(Vec<detect::Detection>, W)>,
) -> Result<Plan> {
    let needs_defaults = with.key.is_none() || with.key_files.is_none() || with.paths.is_none();
    let defaults: Option<Defaults> = if needs_defaults {
        let (found, ws) = detect()?;
        match with.ecosystem.as_deref().map(str::trim).filter(|e| !e.is_empty() && *e != "auto") {
            Some(name) => {
                let kind = ProjectType::from_name(name).filter(|k| CACHEABLE.contains(k)).ok_or_else(|| {
                    Error::msg(format!("unknown `ecosystem` `{name}` (expected rust, node, python or go)"))
                })?;
                // Use where it was detected if it was; else the root.
                let d = found.into_iter().find(|d| d.kind == kind).unwrap_or_else(|| detect::Detection {
                    kind,
                    confidence: 0.0,
                    evidence: Vec::new(),
                    dir: ".".to_owned(),
                    details: Default::default(),
                });
                profile::defaults(&d, &ws)
            }
            None => found.iter().filter(|d| CACHEABLE.contains(&d.kind)).find_map(|d| profile::defaults(d, &ws)),
        }
    } else {
        None
    };
    let missing = |what: &str| {
        Error::msg(format!(
            "no Rust, Node, Python or Go project found in the workspace to take a default `{what}` from: \
             set `key`, `key_files` and `paths` (or `ecosystem`)"
        ))
    };
    let prefix = match (with.key, &defaults) {
        (Some(k), _) => k.trim().to_owned(),
        (None, Some(d)) => d.prefix.clone(),
        (None, None) => return Err(missing("key")),
    };
    key::check_key("key", &prefix)?;
    let key_files = match (with.key_files, &defaults) {
        (Some(files), _) if files.is_empty() => None,
        (Some(files), _) => Some(files),
        (None, Some(d)) if d.key_files.is_empty() => {
            return Err(Error::msg(format!(
                "no lockfile or manifest found for the {} project: set `key_files` (or `key_files: []` for a fixed key)",
                d.ecosystem
            )));
        }
        (None, Some(d)) => Some(d.key_files.clone()),
        (None, None) => return Err(missing("key_files")),
    };
    let paths = match (with.paths, &defaults) {
        (Some(p), _) => p,
        (None, Some(d)) => d.paths.clone(),
        (None, None) => return Err(missing("paths")),
    };
    let paths = paths.iter().map(|p| workspace_path("paths", p)).collect::<Result<Vec<_>>>()?;
    ensure!(!paths.is_empty(), "`paths` must name at least one workspace path");
    let restore_keys = with.restore_keys.unwrap_or_else(|| vec![format!("{prefix}-")]);
    for k in &restore_keys {
        key::check_key("restore_keys", k)?;
    }
    Ok(Plan {
        ecosystem: defaults.as_ref().map(|d| d.ecosystem),
        prefix,
        key_files,
        paths,
        restore_keys,
        save: with.save.unwrap_or(true),
        strict: with.strict.unwrap_or(false),
        notes: defaults.map(|d| d.notes).unwrap_or_default(),
    })
}

/// The post phase: save what the main phase asked for.
fn post(ctx: &Context) -> Result<Output> {
    let Some(state) = ctx.state::<State>()? else {
        ctx.info("nothing to save");
        return Ok(Output::new().set("saved", false));
    };
    let existing: Vec<&String> = state.paths.iter().filter(|p| Path::new(p).exists()).collect();
    if existing.is_empty() {
        ctx.warn(format!("none of the cache paths exist ({}): nothing to save", state.paths.join(", ")));
        return Ok(Output::new().set("saved", false).summary(format!(
            "Cache {} not saved: none of {} exist.\n",
            code(&state.key),
            list(&state.paths)
        )));
    }
    match cache::save(&state.key, &state.paths) {
        Ok(saved) if saved.entries == 0 => {
            ctx.info(format!("cache `{}` already exists: kept as it is", state.key));
            Ok(Output::new()
                .set("saved", false)
                .set("size", saved.size)
                .summary(format!("Cache {} already existed (kept as it is).\n", code(&state.key))))
        }
        Ok(saved) => {
            ctx.info(format!("saved cache `{}`: {} entries, {}", state.key, saved.entries, bytes(saved.size)));
            Ok(Output::new().set("saved", true).set("size", saved.size).set("entries", saved.entries).summary(format!(
                "Saved cache {}: {} entries from {}, {} stored.\n",
                code(&state.key),
                saved.entries,
                list(&state.paths),
                bytes(saved.size)
            )))
        }
        Err(e) if !state.strict => {
            ctx.warn(format!("{e} (the job is not failed for it)"));
            Ok(Output::new().set("saved", false).summary(format!("Cache {} not saved: {e}\n", code(&state.key))))
        }
        Err(e) => Err(e.output("saved", false)),
    }
}

fn describe_files(files: &[String]) -> String {
    match files.len() {
        0 => "no key files: a fixed key".to_owned(),
        1..=5 => files.join(", "),
        n => format!("{}, … ({n} files)", files[..4].join(", ")),
    }
}

fn list(items: &[String]) -> String {
    items.iter().map(|i| code(i)).collect::<Vec<_>>().join(", ")
}

/// The main phase's markdown summary.
pub fn main_summary(plan: &Plan, key: &str, key_files: &[String], hit: Option<&Hit>, will_save: bool) -> String {
    let mut t = Table::new(["", ""]);
    let result = match hit {
        Some(h) if h.exact => format!("hit, {}", bytes(h.size)),
        Some(h) => format!("restored {} ({}), a fallback", code(&h.key), bytes(h.size)),
        None => "miss".to_owned(),
    };
    t.row(["Result", &result]);
    if let Some(e) = plan.ecosystem {
        t.row(["Defaults", e]);
    }
    let files = if key_files.is_empty() { "—".to_owned() } else { describe_files(key_files) };
    t.row(["Key files", &files]);
    t.row(["Paths".to_owned(), list(&plan.paths)]);
    let save = if will_save {
        "after the job"
    } else if hit.is_some_and(|h| h.exact) {
        "no (exact hit)"
    } else {
        "no (`save: false`)"
    };
    t.row(["Save", save]);
    format!("### Cache {}\n\n{t}", code(key))
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    struct Ws(BTreeSet<String>);

    impl profile::Workspace for Ws {
        fn exists(&self, path: &str) -> bool {
            self.0.contains(path)
        }
        fn env_path(&self, _: &str) -> Option<String> {
            None
        }
        fn glob(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
    }

    fn plan_for(with: serde_json::Value, files: &[&str]) -> Result<Plan> {
        let with: With = serde_json::from_value(with).map_err(|e| Error::msg(e.to_string()))?;
        let files: Vec<String> = files.iter().map(|s| (*s).to_owned()).collect();
        plan(with, || Ok((detect::detect_files(&files), Ws(files.iter().cloned().collect()))))
    }

    #[test]
    fn defaults_from_the_detected_project() {
        let p = plan_for(serde_json::json!({}), &["Cargo.toml", "Cargo.lock", "web/package.json"]).unwrap();
        assert_eq!(p.ecosystem, Some("rust"));
        assert_eq!(p.prefix, "cargo");
        assert_eq!(p.key_files.as_deref(), Some(&["Cargo.lock".to_string()][..]));
        assert_eq!(p.paths, ["target", ".cargo/registry", ".cargo/git"]);
        assert_eq!(p.restore_keys, ["cargo-"]);
        assert!(p.save && !p.strict);
    }

    #[test]
    fn explicit_inputs_skip_detection() {
        let with = serde_json::json!({"key": "tools-v1", "key_files": [], "paths": "bin\n./tools/", "save": "false"});
        let with: With = serde_json::from_value(with).unwrap();
        let p = plan::<Ws>(with, || panic!("no detection needed")).unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.key_files.clone(), p.paths.clone()),
            ("tools-v1", None, vec!["bin".to_string(), "tools".to_string()])
        );
        assert!(!p.save);
        assert_eq!(p.ecosystem, None);
    }

    #[test]
    fn ecosystem_override_and_errors() {
        let p =
            plan_for(serde_json::json!({"ecosystem": "node"}), &["Cargo.toml", "Cargo.lock", "package.json"]).unwrap();
        assert_eq!((p.prefix.as_str(), p.paths[0].as_str()), ("npm", "node_modules"));
        let e = plan_for(serde_json::json!({"ecosystem": "nix"}), &["flake.nix"]).unwrap_err();
        assert!(e.message().starts_with("unknown `ecosystem` `nix`"), "{e}");
        let e = plan_for(serde_json::json!({}), &["flake.nix"]).unwrap_err();
        assert!(e.message().contains("set `key`, `key_files` and `paths`"), "{e}");
        let e = plan_for(serde_json::json!({"ecosystem": "go"}), &[]).unwrap_err();
        assert!(e.message().starts_with("no lockfile or manifest found for the go project"), "{e}");
        let e = plan_for(serde_json::json!({"paths": ["/etc"]}), &["go.mod"]).unwrap_err();
        assert!(e.message().contains("relative to the workspace"), "{e}");
        let e = plan_for(serde_json::json!({"key": "a b"}), &["go.mod"]).unwrap_err();
        assert!(e.message().contains("must not contain"), "{e}");
    }

    #[test]
    fn summary() {
        let p = plan_for(serde_json::json!({}), &["go.mod", "go.sum"]).unwrap();
        let hit = Hit { key: "go-1".into(), exact: false, size: 2048 };
        let md = main_summary(&p, "go-2", &["go.sum".into()], Some(&hit), true);
        assert!(md.starts_with("### Cache `go-2`\n\n"), "{md}");
        assert!(md.contains("| Result | restored `go-1` (2.0 KiB), a fallback |"), "{md}");
        assert!(md.contains("| Save | after the job |"), "{md}");
    }

    #[test]
    fn state_round_trips() {
        let s = State { key: "k".into(), paths: vec!["target".into()], strict: false };
        let out = Output::new().post_state_json(&s).unwrap();
        let ctx = Context::builder().phase(Phase::Post).state(out.post_state_text().unwrap()).build();
        assert_eq!(ctx.state::<State>().unwrap(), Some(s));
    }
}
