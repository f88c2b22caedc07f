//! `nix-check`: summarise a flake and run `nix flake check`.
//!
//! ```yaml
//! - uses: nix-check@1
//!   with: { args: ["--keep-going"] }
//! ```
//!
//! Runs, through the `exec` import (manifest `exec = ["nix"]`):
//!
//! 1. `nix flake metadata --json` and `nix flake show --json` (output
//!    captured and parsed) for a summary of the flake: description,
//!    revision, inputs, and the packages, checks, apps, devShells and
//!    formatter of each system. These are informational: when one fails, a
//!    warning is logged and the check still runs.
//! 2. `nix flake check`, streamed to the step log; a non-zero exit fails
//!    the step (the counts found before stay as outputs, and the summary
//!    of the flake is shown with the failed step).
//!
//! Every command gets `--extra-experimental-features 'nix-command flakes'`,
//! which Debian's `nix-bin` needs and which is harmless elsewhere.

#![warn(missing_docs)]

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use viaduct_plugin_common::time::Utc;
use viaduct_plugin_sdk::{
    exec::{Command, Exit},
    markdown::{Table, code, escape},
    prelude::*,
};

/// The `with:` inputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// The flake reference (default `.`, the workspace).
    #[serde(default = "default_flake", deserialize_with = "de::string")]
    flake: String,
    /// Extra arguments for `nix flake check`.
    #[serde(default, deserialize_with = "de::list")]
    args: Vec<String>,
    /// Summarise the flake first (`nix flake metadata` and `nix flake show`).
    #[serde(default = "yes", deserialize_with = "de::bool")]
    metadata: bool,
    /// Evaluate the outputs of every system, not just the runner's.
    #[serde(default, deserialize_with = "de::bool")]
    all_systems: bool,
}

fn default_flake() -> String {
    ".".to_owned()
}

fn yes() -> bool {
    true
}

/// Flake outputs that have one attribute set per system.
pub const PER_SYSTEM: [&str; 5] = ["packages", "checks", "apps", "devShells", "formatter"];

/// The message when nix cannot be started.
pub const NOT_INSTALLED: &str = "nix is not installed on this runner (install it, e.g. `apt-get install nix-bin`)";

/// `NIX_CONFIG` settings (from the step's environment) passed on to nix,
/// as `--option NAME VALUE`: programs a plugin runs get a fixed
/// environment, and settings that make nix load or run code are refused.
pub const PASSED_SETTINGS: &[&str] = &[
    "substituters",
    "extra-substituters",
    "trusted-public-keys",
    "extra-trusted-public-keys",
    "max-jobs",
    "cores",
    "sandbox",
    "fallback",
    "connect-timeout",
    "keep-going",
    "warn-dirty",
    "accept-flake-config",
];

/// The step's `NIX_CONFIG` as `--option` pairs (see [`PASSED_SETTINGS`]).
pub fn settings(nix_config: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for line in nix_config.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::msg(format!("NIX_CONFIG: `{line}` is not `name = value`")));
        };
        let name = name.trim();
        ensure!(
            PASSED_SETTINGS.contains(&name),
            "NIX_CONFIG: the setting `{name}` is not passed to nix (passed: {})",
            PASSED_SETTINGS.join(", ")
        );
        out.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(out)
}

/// `nix` with the experimental features flakes need, and `settings`.
fn nix(settings: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new("nix").args(["--extra-experimental-features", "nix-command flakes"]);
    for (name, value) in settings {
        cmd = cmd.args(["--option", name.as_str(), value.as_str()]);
    }
    cmd.args(args.iter().copied())
}

/// Runs a nix command; a failure to start is the "not installed" error
/// (the runner's own reason goes to the log).
fn run_nix(cmd: &Command) -> Result<Exit> {
    cmd.run().map_err(|e| {
        viaduct_plugin_sdk::log::error(e.message());
        Error::msg(NOT_INSTALLED)
    })
}

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    let flake = w.flake.trim().to_owned();
    ensure!(!flake.is_empty() && !flake.starts_with('-'), "`flake` must be a flake reference, not `{flake}`");
    let mut out = Output::new();
    let mut md = format!("### Flake {}\n\n", code(&flake));
    let settings = settings(ctx.env("NIX_CONFIG").unwrap_or_default())?;

    if w.metadata {
        let meta = capture_json(&ctx, &nix(&settings, &["flake", "metadata", "--json", &flake]))?;
        let mut show_args = vec!["flake", "show", "--json"];
        if w.all_systems {
            show_args.push("--all-systems");
        }
        show_args.push(&flake);
        let show = capture_json(&ctx, &nix(&settings, &show_args))?;
        if let Some(meta) = &meta {
            let info = FlakeInfo::from_metadata(meta);
            info.add_outputs(&mut out);
            md.push_str(&info.markdown());
        }
        if let Some(show) = &show {
            let outputs = Outputs::from_show(show);
            outputs.add_outputs(&mut out);
            ctx.info(outputs.log_line());
            md.push_str(&outputs.markdown());
        }
    }

    let mut check = nix(&settings, &["flake", "check", &flake]);
    if w.all_systems {
        check = check.arg("--all-systems");
    }
    let check = check.args(w.args.iter().cloned());
    ctx.info(format!("running {check}"));
    let exit = run_nix(&check)?;
    conclude(out, md, &exit)
}

/// The step's result from how `nix flake check` ended: the outputs with
/// `check=passed`, or an error carrying them (`check=failed`) and the
/// summary, so the flake's table is shown with the failed step too.
fn conclude(mut out: Output, mut md: String, exit: &Exit) -> Result<Output> {
    if !exit.success() {
        out.insert("check", "failed");
        md.push_str(&format!("\n`nix flake check` **failed** with exit code {} (see the log).\n", exit.code));
        return Err(out
            .summary(md)
            .fail(format!("`nix flake check` failed with exit code {} (see the log)", exit.code)));
    }
    out.insert("check", "passed");
    md.push_str("\n`nix flake check` passed.\n");
    Ok(out.summary(md))
}

/// Runs a command capturing its JSON output. A non-zero exit or bad JSON
/// is a warning (`Ok(None)`); a failure to start is an error.
fn capture_json(ctx: &Context, cmd: &Command) -> Result<Option<Value>> {
    ctx.info(format!("running {cmd}"));
    let exit = run_nix(&cmd.clone().capture_stdout())?;
    if !exit.success() {
        ctx.warn(format!("`{cmd}` failed with exit code {}; continuing with the check", exit.code));
        return Ok(None);
    }
    match exit.json() {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            ctx.warn(format!("`{cmd}`: {e}; continuing with the check"));
            Ok(None)
        }
    }
}

/// What `nix flake metadata --json` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlakeInfo {
    /// The flake's description.
    pub description: String,
    /// Its URL (resolved).
    pub url: String,
    /// Git revision, when it has one (a dirty tree has none).
    pub revision: String,
    /// Last modification, RFC 3339.
    pub last_modified: String,
    /// Direct inputs of the flake.
    pub inputs: usize,
}

impl FlakeInfo {
    /// Parses `nix flake metadata --json`; missing fields stay empty.
    pub fn from_metadata(v: &Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let revision = v.get("revision").or_else(|| v.pointer("/locked/rev")).map(s).unwrap_or_default();
        let root = v.pointer("/locks/root").and_then(Value::as_str).unwrap_or("root");
        let inputs =
            v.pointer(&format!("/locks/nodes/{root}/inputs")).and_then(Value::as_object).map_or(0, |m| m.len());
        FlakeInfo {
            description: v.get("description").map(s).unwrap_or_default(),
            url: v.get("resolvedUrl").or_else(|| v.get("url")).map(s).unwrap_or_default(),
            revision,
            last_modified: v
                .get("lastModified")
                .and_then(Value::as_u64)
                .map(|secs| Utc::from_unix(secs).rfc3339())
                .unwrap_or_default(),
            inputs,
        }
    }

    fn add_outputs(&self, out: &mut Output) {
        out.insert("description", &self.description);
        out.insert("revision", &self.revision);
        out.insert("inputs", self.inputs);
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        if !self.description.is_empty() {
            md.push_str(&format!("{}\n\n", escape(&self.description)));
        }
        let mut t = Table::new(["", ""]);
        if !self.url.is_empty() {
            t.row(["URL", &code(&self.url)]);
        }
        if !self.revision.is_empty() {
            t.row(["Revision", &code(&self.revision)]);
        }
        if !self.last_modified.is_empty() {
            t.row(["Last modified", &self.last_modified]);
        }
        t.row(["Inputs".to_owned(), self.inputs.to_string()]);
        md.push_str(&t.to_string());
        md
    }
}

/// What `nix flake show --json` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Per-system output kind → system → attribute names (empty when that
    /// system was not evaluated).
    pub per_system: BTreeMap<&'static str, BTreeMap<String, Vec<String>>>,
    /// Every system seen.
    pub systems: Vec<String>,
    /// Other outputs (nixosConfigurations, overlays, lib, …) → entries.
    pub other: BTreeMap<String, usize>,
}

impl Outputs {
    /// Parses `nix flake show --json`.
    pub fn from_show(v: &Value) -> Self {
        let mut out = Outputs::default();
        let Some(top) = v.as_object() else { return out };
        let mut systems = std::collections::BTreeSet::new();
        for (kind, value) in top {
            let Some(map) = value.as_object() else { continue };
            if let Some(per) = PER_SYSTEM.iter().find(|k| *k == kind) {
                let entry = out.per_system.entry(per).or_default();
                for (system, attrs) in map {
                    systems.insert(system.clone());
                    let names = match attrs.as_object() {
                        // `formatter.<system>` is the derivation itself.
                        Some(a) if a.contains_key("type") => vec![String::new()],
                        Some(a) => a.iter().filter(|(_, v)| v.is_object()).map(|(k, _)| k.clone()).collect(),
                        None => Vec::new(),
                    };
                    entry.insert(system.clone(), names);
                }
            } else {
                out.other.insert(kind.clone(), if map.contains_key("type") { 1 } else { map.len() });
            }
        }
        out.systems = systems.into_iter().collect();
        out
    }

    /// Total attributes of `kind` over all systems.
    pub fn count(&self, kind: &str) -> usize {
        self.per_system.get(kind).map_or(0, |m| m.values().map(Vec::len).sum())
    }

    fn add_outputs(&self, out: &mut Output) {
        out.insert("packages", self.count("packages"));
        out.insert("checks", self.count("checks"));
        out.insert("apps", self.count("apps"));
        out.insert("dev_shells", self.count("devShells"));
        out.insert("systems", self.systems.join(","));
    }

    fn log_line(&self) -> String {
        format!(
            "flake outputs: {} packages, {} checks, {} apps, {} devShells over {} systems",
            self.count("packages"),
            self.count("checks"),
            self.count("apps"),
            self.count("devShells"),
            self.systems.len()
        )
    }

    /// A table: one row per output kind, one column per system; each cell
    /// lists the attribute names (`—` for a system not evaluated).
    pub fn markdown(&self) -> String {
        let mut md = String::from("\n");
        if !self.systems.is_empty() {
            let mut header = vec!["Output".to_owned()];
            header.extend(self.systems.iter().map(|s| code(s)));
            let mut t = Table::new(header);
            for kind in PER_SYSTEM {
                let Some(by_system) = self.per_system.get(kind) else { continue };
                let mut row = vec![kind.to_owned()];
                for system in &self.systems {
                    row.push(match by_system.get(system) {
                        None => String::new(),
                        Some(names) if names.is_empty() => "—".to_owned(),
                        Some(names) => names_cell(names),
                    });
                }
                t.row(row);
            }
            md.push_str(&t.to_string());
        }
        if !self.other.is_empty() {
            let list: Vec<String> = self.other.iter().map(|(k, n)| format!("{} ({n})", code(k))).collect();
            md.push_str(&format!("\nOther outputs: {}\n", list.join(", ")));
        }
        md
    }
}

fn names_cell(names: &[String]) -> String {
    if names.len() == 1 && names[0].is_empty() {
        return "yes".to_owned();
    }
    let shown: Vec<String> = names.iter().take(8).map(|n| code(n)).collect();
    match names.len() {
        n if n > 8 => format!("{n}: {}, …", shown.join(", ")),
        n => format!("{n}: {}", shown.join(", ")),
    }
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn show() -> Value {
        json!({
            "apps": {"x86_64-linux": {"default": {"type": "app"}}, "aarch64-darwin": {}},
            "checks": {
                "x86_64-linux": {"fmt": {"type": "derivation", "name": "fmt"}, "clippy": {"type": "derivation", "name": "clippy"}},
                "aarch64-darwin": {}
            },
            "devShells": {"x86_64-linux": {"default": {"type": "derivation", "name": "shell"}}, "aarch64-darwin": {}},
            "formatter": {"x86_64-linux": {"type": "derivation", "name": "nixfmt"}, "aarch64-darwin": {}},
            "packages": {"x86_64-linux": {"default": {"type": "derivation"}, "viaduct": {"type": "derivation"}}, "aarch64-darwin": {}},
            "nixosModules": {"default": {"type": "nixos-module"}, "runner": {"type": "nixos-module"}},
            "overlays": {"default": {"type": "nixpkgs-overlay"}}
        })
    }

    #[test]
    fn show_is_counted_per_system() {
        let o = Outputs::from_show(&show());
        assert_eq!(o.systems, ["aarch64-darwin", "x86_64-linux"]);
        assert_eq!((o.count("packages"), o.count("checks"), o.count("apps"), o.count("devShells")), (2, 2, 1, 1));
        assert_eq!(o.other.get("nixosModules"), Some(&2));
        let md = o.markdown();
        assert!(md.contains("| Output | `aarch64-darwin` | `x86_64-linux` |"), "{md}");
        assert!(md.contains("| checks | — | 2: `clippy`, `fmt` |"), "{md}");
        assert!(md.contains("| formatter | — | yes |"), "{md}");
        assert!(md.contains("Other outputs: `nixosModules` (2), `overlays` (1)"), "{md}");
        let mut out = Output::new();
        o.add_outputs(&mut out);
        assert_eq!(out.get("dev_shells"), Some("1"));
        assert_eq!(out.get("systems"), Some("aarch64-darwin,x86_64-linux"));
    }

    #[test]
    fn metadata_is_summarised() {
        let meta = json!({
            "description": "Viaduct CI",
            "lastModified": 1_709_251_199u64,
            "locked": {"rev": "abc123", "type": "git"},
            "locks": {"nodes": {"root": {"inputs": {"nixpkgs": "nixpkgs", "flake-utils": "flake-utils"}}}, "root": "root", "version": 7},
            "resolvedUrl": "git+file:///workspace",
            "url": "git+file:///workspace?rev=abc123"
        });
        let info = FlakeInfo::from_metadata(&meta);
        assert_eq!(info.revision, "abc123");
        assert_eq!(info.inputs, 2);
        assert_eq!(info.last_modified, "2024-02-29T23:59:59Z");
        let md = info.markdown();
        assert!(md.starts_with("Viaduct CI\n\n|  |  |\n"), "{md}");
        assert!(md.contains("| URL | `git+file:///workspace` |"), "{md}");
        assert_eq!(FlakeInfo::from_metadata(&json!({})), FlakeInfo::default());
    }

    #[test]
    fn commands() {
        let c = nix(&[], &["flake", "check", "."]).arg("--keep-going");
        assert_eq!(c.to_string(), "nix --extra-experimental-features 'nix-command flakes' flake check . --keep-going");
    }

    #[test]
    fn a_failed_check_keeps_outputs_and_summary() {
        let out = Output::new().set("packages", 2);
        let md = "### Flake `.`\n".to_owned();
        let e = conclude(out.clone(), md.clone(), &Exit { code: 1, stdout: Vec::new() }).unwrap_err();
        assert_eq!(e.message(), "`nix flake check` failed with exit code 1 (see the log)");
        assert_eq!(e.outputs()[1], ("check".to_owned(), "failed".to_owned()));
        assert_eq!(
            e.summary_text(),
            Some("### Flake `.`\n\n`nix flake check` **failed** with exit code 1 (see the log).\n")
        );
        let ok = conclude(out, md, &Exit { code: 0, stdout: Vec::new() }).unwrap();
        assert_eq!(ok.get("check"), Some("passed"));
        assert!(ok.summary_text().unwrap().ends_with("`nix flake check` passed.\n"));
    }

    #[test]
    fn nix_missing_is_reported_clearly() {
        // Natively every exec fails to start, as on a runner without nix.
        let e = run(Context::builder().build()).unwrap_err();
        assert_eq!(e.message(), NOT_INSTALLED);
        let e = run(Context::builder().with("flake", "--impure").build()).unwrap_err();
        assert!(e.message().contains("must be a flake reference"), "{e}");
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn nix_config_settings_pass_only_when_safe() {
        let s = settings("# no network\nsubstituters =\nmax-jobs = 2\n").unwrap();
        assert_eq!(s, [("substituters".to_string(), String::new()), ("max-jobs".to_string(), "2".to_string())]);
        let e = settings("plugin-files = ./evil.so").unwrap_err();
        assert!(e.message().contains("`plugin-files` is not passed to nix"), "{}", e.message());
    }
}
