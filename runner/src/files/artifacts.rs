//! A job's `artifacts:`: workspace globs expanded to files and uploaded.
//!
//! A pattern without wildcards names a file, or a directory whose files are
//! all uploaded; `*` matches within one path segment and `**` across
//! segments (`dist/**`, `reports/*.xml`, `**/junit.xml`). Each file becomes
//! an artifact named by its workspace-relative path. Symbolic links are
//! followed only to files inside the workspace; a link out of it is an
//! error, not a silent skip.

use std::path::{Path, PathBuf};

use viaduct_pipeline::glob::Glob;
use viaduct_proto::v1::{Artifact, JobRef};

use super::{Files, paths};

/// What a job's artifact upload did.
#[derive(Debug, Default)]
pub struct Uploaded {
    /// Artifacts stored.
    pub artifacts: Vec<Artifact>,
    /// Patterns that matched no file.
    pub unmatched: Vec<String>,
}

impl Files {
    /// Unpacks the artifacts of job `from` (one of the assignment's
    /// `artifacts_from`) into `workspace`, every path resolved beneath it;
    /// returns how many files.
    pub async fn fetch_artifacts(&self, job: &JobRef, from: &str, workspace: &Path) -> Result<u64, String> {
        use tokio_stream::StreamExt;
        let what = format!("fetching the artifacts of job {from}");
        let request = viaduct_proto::v1::FetchArtifactsRequest { job: Some(job.clone()), from_job: from.to_string() };
        let stream =
            self.client.agent().fetch_artifacts(request).await.map_err(|s| super::status(&what, &s))?.into_inner().map(
                |m| {
                    m.map(|c| bytes::Bytes::from(c.data))
                        .map_err(|s| std::io::Error::other(viaduct_sdk::status_line(&s)))
                },
            );
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let ws = workspace.to_path_buf();
        tokio::task::spawn_blocking(move || super::unpack::unpack(&ws, reader))
            .await
            .map_err(|e| format!("{what}: the unpacking task failed: {e}"))?
            .map_err(|e| format!("{what}: {e}"))
    }
}

/// The files `pattern` names in `workspace`, as (path, name) pairs.
pub fn expand(workspace: &Path, pattern: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let wildcard = pattern.contains('*') || pattern.contains('?');
    if !wildcard {
        let path = paths::resolve(workspace, pattern)?;
        if !path.exists() {
            return Ok(Vec::new());
        }
        return files_under(workspace, &path);
    }
    let glob = Glob::new(pattern.trim_start_matches("./")).map_err(|e| format!("`{pattern}`: {e}"))?;
    // Walk from the literal directory before the first wildcard.
    let literal: Vec<&str> = pattern.split('/').take_while(|s| !s.contains(['*', '?'])).collect();
    let base = paths::resolve(workspace, &literal.join("/"))?;
    if !base.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (path, name) in files_under(workspace, &base)? {
        if glob.is_match(&name) {
            out.push((path, name));
        }
    }
    Ok(out)
}

/// Every file at or under `path` (following links to files inside the
/// workspace), sorted by name.
fn files_under(workspace: &Path, path: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(path).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let ft = entry.file_type();
        let name = paths::relative(workspace, entry.path())
            .ok_or_else(|| format!("{} is not a valid UTF-8 path in the workspace", entry.path().display()))?;
        if ft.is_symlink() {
            paths::check_inside(workspace, entry.path()).map_err(|e| format!("`{name}` is a link: {e}"))?;
            if entry.path().is_file() {
                out.push((entry.path().to_path_buf(), name));
            }
        } else if ft.is_file() {
            out.push((entry.path().to_path_buf(), name));
        }
    }
    Ok(out)
}

impl Files {
    /// Uploads the files the job's `patterns` match. The first error
    /// (a bad pattern, a link out of the workspace, a refused upload) ends
    /// it; what was uploaded before stays.
    pub async fn upload_artifacts(
        &self,
        job: &JobRef,
        workspace: &Path,
        patterns: &[String],
    ) -> Result<Uploaded, String> {
        let mut done = Uploaded::default();
        let mut seen = std::collections::HashSet::new();
        for pattern in patterns {
            let (ws, p) = (workspace.to_path_buf(), pattern.clone());
            let files = tokio::task::spawn_blocking(move || expand(&ws, &p))
                .await
                .map_err(|e| format!("artifact search failed: {e}"))??;
            if files.is_empty() {
                done.unmatched.push(pattern.clone());
            }
            for (path, name) in files {
                if seen.insert(name.clone()) {
                    done.artifacts.push(self.upload_file(job, &path, &name).await?);
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_literals_directories_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        for f in ["dist/app", "dist/lib/a.so", "reports/unit.xml", "reports/deep/e2e.xml", "README"] {
            let p = ws.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        let names = |pat: &str| expand(ws, pat).unwrap().into_iter().map(|(_, n)| n).collect::<Vec<_>>();
        assert_eq!(names("README"), ["README"]);
        assert_eq!(names("dist"), ["dist/app", "dist/lib/a.so"]);
        assert_eq!(names("reports/*.xml"), ["reports/unit.xml"]);
        assert_eq!(names("reports/**/*.xml"), ["reports/deep/e2e.xml"]);
        assert_eq!(names("**/*.xml"), ["reports/deep/e2e.xml", "reports/unit.xml"]);
        assert!(names("missing").is_empty());
        assert!(expand(ws, "../etc/passwd").is_err());
    }

    #[test]
    fn links_out_of_the_workspace_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("out")).unwrap();
        std::fs::write(ws.join("out/ok"), "x").unwrap();
        std::os::unix::fs::symlink("ok", ws.join("out/inner-link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.join("out/passwd")).unwrap();
        let err = expand(&ws, "out").unwrap_err();
        assert!(err.contains("out/passwd") && err.contains("out of the workspace"), "{err}");
        std::fs::remove_file(ws.join("out/passwd")).unwrap();
        let names: Vec<String> = expand(&ws, "out").unwrap().into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["out/inner-link", "out/ok"]);
    }
}
