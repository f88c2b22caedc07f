//! Checks that ARCHITECTURE.md says the truth, the way rust-analyzer's tidy
//! tests do: its *Layering rules* table is parsed and every rule checked —
//! crate rules against `cargo metadata` (direct dependencies), module rules
//! against the code (no path of a forbidden module anywhere outside
//! comments) — and every module of the server and the runner must appear
//! in the code map. Run by `cargo test -p xtask` (and so by `cargo xtask
//! test`).

#![cfg(test)]

use std::path::{Path, PathBuf};

/// One row of the table: what, and what it must not depend on.
#[derive(Debug)]
enum Rule {
    /// A crate must not list these crates as dependencies.
    Crate { name: String, forbidden: Vec<String> },
    /// No file under `path` (but those under `except`) may name these
    /// paths (`crate::api`, `std::fs`).
    Module { path: String, except: Vec<String>, forbidden: Vec<String> },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

/// The words between backticks in `cell`.
fn quoted(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The rows of the *Layering rules* table.
fn rules(doc: &str) -> Vec<Rule> {
    let start = doc.find("## Layering rules").expect("ARCHITECTURE.md has a `## Layering rules` section");
    let section = &doc[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut rules = Vec::new();
    for line in section[..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [what, forbidden] = cells[..] else { continue };
        let mut named = quoted(what).into_iter();
        let (Some(name), forbidden) = (named.next(), quoted(forbidden)) else { continue };
        if what.starts_with("crate") {
            rules.push(Rule::Crate { name, forbidden });
        } else if what.starts_with("module") {
            // `module `a` except `a/b``: the rest of the quoted words.
            rules.push(Rule::Module { path: name, except: named.collect(), forbidden });
        }
    }
    rules
}

/// Each workspace package's name and direct dependencies.
fn packages() -> Vec<(String, Vec<String>)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                // Build scripts and tests may use anything.
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without comments (line comments, doc comments).
fn code_of(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Where a file names `path`: `crate::api` in `use crate::api::x`,
/// `crate::{api, …}` and `crate::api::f()` alike.
fn names(code: &str, path: &str) -> bool {
    let Some((head, last)) = path.rsplit_once("::") else { return names_crate(code, path) };
    let is_word_end = |rest: &str| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_');
    let direct = code.match_indices(path).any(|(i, _)| is_word_end(&code[i + path.len()..]));
    // `crate::{a, api::x}` or `crate::{\n    api,`
    let grouped = code.match_indices(&format!("{head}::{{")).any(|(i, _)| {
        let group = &code[i + head.len() + 3..];
        let group = &group[..group.find("};").unwrap_or(group.len())];
        group
            .split(|c: char| c == ',' || c == '{' || c.is_whitespace())
            .any(|item| item == last || item.strip_prefix(last).is_some_and(|r| r.starts_with("::")))
    });
    direct || grouped
}

/// Where a file names crate `name`: `name::x` or `use name;`, not a module
/// of the same name further down a path (`store::postgres::x`), nor the
/// word in a string.
fn names_crate(code: &str, name: &str) -> bool {
    let starts_path = |i: usize| !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
    let path = code.match_indices(&format!("{name}::")).any(|(i, _)| starts_path(i));
    path || code.contains(&format!("use {name};")) || code.contains(&format!("extern crate {name}"))
}

#[test]
fn the_layering_rules_of_architecture_md_hold() {
    let rules = rules(&architecture());
    assert!(rules.len() >= 10, "the Layering rules table lost rows: {rules:?}");
    let packages = packages();
    let mut broken = Vec::new();
    for rule in &rules {
        match rule {
            Rule::Crate { name, forbidden } => {
                let (_, deps) = packages
                    .iter()
                    .find(|(p, _)| p == name)
                    .unwrap_or_else(|| panic!("ARCHITECTURE.md names crate `{name}`, which is not in the workspace"));
                for f in forbidden.iter().filter(|f| deps.contains(f)) {
                    broken.push(format!("crate `{name}` depends on `{f}`"));
                }
            }
            Rule::Module { path, except, forbidden } => {
                let mut files = Vec::new();
                rust_files(&root().join(path), &mut files);
                files.retain(|f| !except.iter().any(|e| f.starts_with(root().join(e))));
                assert!(!files.is_empty(), "ARCHITECTURE.md names `{path}`, which has no Rust files");
                for file in files {
                    let code = code_of(&std::fs::read_to_string(&file).expect("read"));
                    for f in forbidden.iter().filter(|f| names(&code, f)) {
                        let shown = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
                        broken.push(format!("{shown} uses `{f}` (rule for `{path}`)"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "ARCHITECTURE.md's layering rules are broken:\n{}", broken.join("\n"));
}

#[test]
fn every_module_of_the_server_and_runner_is_in_the_code_map() {
    let doc = architecture();
    let mut missing = Vec::new();
    for dir in ["server/src", "runner/src"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("read").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if matches!(name.as_str(), "lib.rs" | "main.rs") {
                continue;
            }
            let stem = name.trim_end_matches(".rs");
            let mentioned = [format!("`{name}`"), format!("`{stem}/"), format!("`{stem}`")]
                .iter()
                .any(|m| doc.contains(m.as_str()));
            if !mentioned {
                missing.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "modules missing from ARCHITECTURE.md's code map: {}", missing.join(", "));
}

#[test]
fn the_rule_matcher_sees_every_way_to_name_a_module() {
    assert!(names("use crate::api::runs;", "crate::api"));
    assert!(names("use crate::{error::Error, api};", "crate::api"));
    assert!(names("use crate::{\n    api::x,\n};", "crate::api"));
    assert!(names("crate::api::f()", "crate::api"));
    assert!(!names("use crate::apis;", "crate::api"));
    assert!(names("std::fs::read(p)", "std::fs"));
    assert!(!code_of("// use crate::api;").contains("crate::api"));
    assert!(names("let db = sled::open(p);", "sled"));
    assert!(names("use sled;", "sled"));
    assert!(names("use {sled::Db, x};", "sled"));
    assert!(!names("store::postgres::check_url(u)", "postgres"));
    assert!(!names("Store::Sled; \"sled\"", "sled"));
}
