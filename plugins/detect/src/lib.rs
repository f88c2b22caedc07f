//! `detect`: which kinds of project the workspace holds.
//!
//! Looks at file names in the workspace root and its subdirectories (down to
//! `depth` levels) — `Cargo.toml`, `package.json` and its lockfiles,
//! `pyproject.toml`, `go.mod`, `flake.nix`, `Dockerfile`, `pom.xml`,
//! `Gemfile`, `*.csproj`, … — and reports each project type found with a
//! confidence and the evidence, so later steps can branch on it:
//!
//! ```yaml
//! - id: detect
//!   uses: detect@1
//! - if: ${{ steps.detect.outputs.rust == 'true' }}
//!   run: cargo test
//! ```
//!
//! The detection rules live in `viaduct-plugin-common`, shared with the
//! `cache` plugin's defaults.

#![warn(missing_docs)]

use serde::Deserialize;
use viaduct_plugin_common::detect::{self, Detection, ProjectType};
use viaduct_plugin_sdk::{
    fs::workspace_path,
    markdown::{Table, code},
    prelude::*,
};

/// The `with:` inputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct With {
    /// Directory levels to look at: 1 = the root only, 2 = also its
    /// subdirectories (default), at most 5.
    #[serde(default = "default_depth", deserialize_with = "de::number")]
    depth: usize,
    /// The directory to look in, relative to the workspace.
    #[serde(default = "default_path", deserialize_with = "de::string")]
    path: String,
}

fn default_depth() -> usize {
    2
}

fn default_path() -> String {
    ".".to_owned()
}

/// The deepest scan allowed.
const MAX_DEPTH: usize = 5;

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    ensure!((1..=MAX_DEPTH).contains(&w.depth), "`depth` must be between 1 and {MAX_DEPTH}, not {}", w.depth);
    let dir = workspace_path("path", &w.path)?;
    let found = detect::detect(std::path::Path::new(&dir), w.depth)
        .with_context(|| format!("cannot scan `{dir}` in the workspace"))?;
    for d in &found {
        ctx.info(format!("{} ({:.2}): {}", d.kind, d.confidence, d.evidence.join(", ")));
    }
    if found.is_empty() {
        ctx.info(format!("no known project type in `{dir}` (depth {})", w.depth));
    }
    Ok(outputs(&found).summary(summary(&found, &dir, w.depth)))
}

/// The outputs for these detections (most confident first).
pub fn outputs(found: &[Detection]) -> Output {
    let mut out = Output::new()
        .set("types", found.iter().map(|d| d.kind.name()).collect::<Vec<_>>().join(","))
        .set("primary", found.first().map_or("", |d| d.kind.name()));
    for kind in ProjectType::ALL {
        out.insert(kind.name(), found.iter().any(|d| d.kind == kind));
    }
    for d in found {
        let t = d.kind.name();
        out.insert(format!("{t}_confidence"), format!("{:.2}", d.confidence));
        out.insert(format!("{t}_dir"), &d.dir);
        for (key, value) in &d.details {
            out.insert(format!("{t}_{key}"), value);
        }
    }
    out
}

/// The markdown summary.
pub fn summary(found: &[Detection], dir: &str, depth: usize) -> String {
    let place = if dir == "." { "the workspace".to_owned() } else { code(dir) };
    if found.is_empty() {
        return format!("No known project type found in {place} (depth {depth}).\n");
    }
    let mut table = Table::new(["Type", "Confidence", "Directory", "Details", "Evidence"]);
    for d in found {
        let details: Vec<String> = d.details.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let evidence: Vec<String> = d.evidence.iter().take(6).map(|e| code(e)).collect();
        let more = d.evidence.len().saturating_sub(6);
        let evidence = if more > 0 { format!("{} and {more} more", evidence.join(", ")) } else { evidence.join(", ") };
        table.row([
            format!("**{}**", d.kind),
            format!("{:.2}", d.confidence),
            code(&d.dir),
            details.join(", "),
            evidence,
        ]);
    }
    format!("### Project types in {place}\n\n{table}")
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn outputs_for_a_mixed_repository() {
        let found =
            detect::detect_files(&files(&["Cargo.toml", "Cargo.lock", "web/package.json", "web/pnpm-lock.yaml"]));
        let out = outputs(&found);
        assert_eq!(out.get("types"), Some("rust,node"));
        assert_eq!(out.get("primary"), Some("rust"));
        assert_eq!(out.get("rust"), Some("true"));
        assert_eq!(out.get("go"), Some("false"));
        assert_eq!(out.get("rust_confidence"), Some("0.96"));
        assert_eq!(out.get("node_dir"), Some("web"));
        assert_eq!(out.get("node_package_manager"), Some("pnpm"));
        assert_eq!(out.get("python_confidence"), None);
        let md = summary(&found, ".", 2);
        assert!(md.starts_with("### Project types in the workspace\n\n| Type |"), "{md}");
        assert!(md.contains(
            "| **node** | 0.85 | `web` | package_manager: pnpm | `web/package.json`, `web/pnpm-lock.yaml` |"
        ));
    }

    #[test]
    fn nothing_found() {
        let out = outputs(&[]);
        assert_eq!((out.get("types"), out.get("primary"), out.get("nix")), (Some(""), Some(""), Some("false")));
        assert_eq!(summary(&[], "sub", 1), "No known project type found in `sub` (depth 1).\n");
    }

    #[test]
    fn run_on_a_directory() {
        let root = std::env::temp_dir().join(format!("viaduct-detect-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("svc")).unwrap();
        std::fs::write(root.join("svc/go.mod"), "module x\n").unwrap();
        // `run` reads the current directory, as inside the sandbox.
        let found = detect::detect(&root, 2).unwrap();
        assert_eq!(outputs(&found).get("go_dir"), Some("svc"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn inputs_are_validated() {
        let e = run(Context::builder().with("depth", 9).build()).unwrap_err();
        assert_eq!(e.message(), "`depth` must be between 1 and 5, not 9");
        let e = run(Context::builder().with("path", "../x").build()).unwrap_err();
        assert!(e.message().contains("no `..`"), "{e}");
        let e = run(Context::builder().with("deep", 1).build()).unwrap_err();
        assert!(e.message().starts_with("unknown input `deep`"), "{e}");
    }
}
