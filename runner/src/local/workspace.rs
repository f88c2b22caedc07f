//! A local run's workspaces: each job's starts as a copy of the directory
//! (never the directory itself: a run does not modify it), and its
//! `artifacts:` are copied out at its end.
//!
//! In a git work tree the copy holds what `git ls-files --cached --others
//! --exclude-standard` lists (tracked files and untracked ones not ignored:
//! `target/`, `node_modules/`… stay out); elsewhere every file. Modes are
//! kept, symbolic links copied as links.
//!
//! [`Seeding`] wraps the runner's executors: it prepares a job's
//! environment as they do, then fills its workspace — where a connected
//! runner checks out the commit.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use viaduct_proto::v1::Executor;

use crate::{
    executor::{Backend, JobEnv, JobSetup, SetupError, StepLog, StepOutcome, StepSpec, StepStop, programs::Programs},
    files::artifacts,
};

/// The files of a directory to copy into workspaces.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The directory.
    pub root: PathBuf,
    /// Its entries to copy, relative to it.
    pub entries: Vec<PathBuf>,
    /// Whether they came from git.
    pub git: bool,
}

impl Snapshot {
    /// What to copy of `root`.
    pub fn of(root: &Path) -> Result<Self, String> {
        let root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
        if let Some(entries) = git_files(&root) {
            return Ok(Self { root, entries, git: true });
        }
        let mut entries = Vec::new();
        for e in walkdir::WalkDir::new(&root).min_depth(1).sort_by_file_name() {
            let e = e.map_err(|e| format!("cannot list {}: {e}", root.display()))?;
            if !e.file_type().is_dir() {
                entries.push(e.path().strip_prefix(&root).unwrap_or(e.path()).to_path_buf());
            }
        }
        Ok(Self { root, entries, git: false })
    }

    /// Copies it into `dest` (an existing, empty directory). Entries that
    /// vanished since they were listed (deleted but still in git's index)
    /// are skipped. Returns the number of files and links copied.
    pub fn copy_to(&self, dest: &Path) -> Result<usize, String> {
        let mut copied = 0;
        for rel in &self.entries {
            let from = self.root.join(rel);
            let Ok(meta) = from.symlink_metadata() else { continue };
            if meta.is_dir() {
                // A git submodule: all of it.
                for e in walkdir::WalkDir::new(&from).min_depth(1) {
                    let e = e.map_err(|e| format!("cannot list {}: {e}", from.display()))?;
                    if !e.file_type().is_dir() {
                        let inner = e.path().strip_prefix(&self.root).unwrap_or(e.path());
                        copy_entry(e.path(), &dest.join(inner))?;
                        copied += 1;
                    }
                }
            } else {
                copy_entry(&from, &dest.join(rel))?;
                copied += 1;
            }
        }
        Ok(copied)
    }
}

/// The files git lists in `root`, if it is in a work tree.
fn git_files(root: &Path) -> Option<Vec<PathBuf>> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut entries: Vec<PathBuf> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(p)))
        .collect();
    entries.dedup();
    Some(entries)
}

/// Copies one file (with its mode) or symbolic link (as a link).
fn copy_entry(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let meta = from.symlink_metadata().map_err(|e| format!("{}: {e}", from.display()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| format!("{}: {e}", from.display()))?;
        std::os::unix::fs::symlink(&target, to).map_err(|e| format!("cannot link {}: {e}", to.display()))
    } else if meta.is_file() {
        std::fs::copy(from, to).map(drop).map_err(|e| format!("cannot copy {}: {e}", from.display()))
    } else {
        // Sockets, fifos, devices: not part of a project.
        Ok(())
    }
}

/// Each job's `artifacts:` and where they go (`None`: not kept), by job id.
pub type Artifacts = std::collections::HashMap<String, (Vec<String>, Option<PathBuf>)>;

/// Where notes about a job go (job id, note).
pub type Notes = Arc<dyn Fn(&str, String) + Send + Sync>;

/// The executors of a local run: a job's environment is theirs, its
/// workspace a copy of the directory; `artifacts:` are copied out before
/// teardown.
pub struct Seeding {
    /// The runner's executors.
    pub inner: Arc<dyn Backend>,
    /// What every workspace starts with.
    pub snapshot: Arc<Snapshot>,
    /// Each job's `artifacts:` and where they go, by job id.
    pub artifacts: Arc<Artifacts>,
    /// Where notes about artifacts go (the terminal).
    pub note: Notes,
}

#[async_trait::async_trait]
impl Backend for Seeding {
    fn executors(&self) -> Vec<Executor> {
        self.inner.executors()
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
        let mut env = self.inner.setup(job).await?;
        let (snapshot, dest) = (Arc::clone(&self.snapshot), env.workspace());
        let copied = tokio::task::spawn_blocking(move || snapshot.copy_to(&dest))
            .await
            .map_err(|e| SetupError(format!("copy task failed: {e}")))
            .and_then(|r| r.map_err(|e| SetupError(format!("cannot copy the directory into the workspace: {e}"))));
        match copied {
            Ok(n) => tracing::debug!(files = n, "workspace filled"),
            Err(e) => {
                env.teardown().await;
                return Err(e);
            }
        }
        env.adopt_workspace().await;
        let artifacts = self.artifacts.get(&job.job.job_id).cloned();
        Ok(Box::new(Seeded { inner: env, job: job.job.job_id.clone(), artifacts, note: Arc::clone(&self.note) }))
    }
}

struct Seeded {
    inner: Box<dyn JobEnv>,
    job: String,
    artifacts: Option<(Vec<String>, Option<PathBuf>)>,
    note: Notes,
}

#[async_trait::async_trait]
impl JobEnv for Seeded {
    fn workspace(&self) -> PathBuf {
        self.inner.workspace()
    }

    async fn run_step(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
        self.inner.run_step(step, log, stop).await
    }

    async fn adopt_workspace(&mut self) {
        self.inner.adopt_workspace().await;
    }

    fn programs(&self) -> Arc<dyn Programs> {
        self.inner.programs()
    }

    async fn teardown(self: Box<Self>) {
        if let Some((patterns, dest)) = self.artifacts.filter(|(p, _)| !p.is_empty()) {
            let workspace = self.inner.workspace();
            let note = match dest {
                None => format!("artifacts not kept ({}): pass --artifacts-dir DIR to copy them", patterns.join(", ")),
                Some(dest) => match tokio::task::spawn_blocking(move || collect(&workspace, &patterns, &dest)).await {
                    Ok(Ok(note)) => note,
                    Ok(Err(e)) => format!("artifacts: {e}"),
                    Err(e) => format!("artifacts: copy task failed: {e}"),
                },
            };
            (self.note)(&self.job, note);
        }
        self.inner.teardown().await;
    }
}

/// Copies the files `patterns` name in `workspace` to `dest`, by their
/// workspace-relative names.
pub fn collect(workspace: &Path, patterns: &[String], dest: &Path) -> Result<String, String> {
    let (mut files, mut unmatched) = (0, Vec::new());
    for pattern in patterns {
        let found = artifacts::expand(workspace, pattern)?;
        if found.is_empty() {
            unmatched.push(pattern.as_str());
        }
        for (path, name) in found {
            let to = dest.join(&name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::copy(&path, &to).map_err(|e| format!("cannot copy {name}: {e}"))?;
            files += 1;
        }
    }
    let mut note = format!("{files} artifact file(s) copied to {}", dest.display());
    if !unmatched.is_empty() {
        note.push_str(&format!("; no files matched: {}", unmatched.join(", ")));
    }
    Ok(note)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::write(root.join("src/main.sh"), "echo hi\n").unwrap();
        std::fs::set_permissions(root.join("src/main.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("target/debug/big"), "built").unwrap();
        std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
        std::os::unix::fs::symlink("src/main.sh", root.join("run")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("outside")).unwrap();
    }

    fn check_copy(snapshot: &Snapshot, dest: &Path) {
        snapshot.copy_to(dest).unwrap();
        let mode = std::fs::metadata(dest.join("src/main.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "modes are kept");
        assert_eq!(std::fs::read_link(dest.join("run")).unwrap(), Path::new("src/main.sh"));
        assert_eq!(std::fs::read_link(dest.join("outside")).unwrap(), Path::new("/etc/hostname"));
    }

    #[test]
    fn a_plain_directory_is_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        tree(&src);
        std::fs::create_dir(&dest).unwrap();
        let snapshot = Snapshot::of(&src).unwrap();
        assert!(!snapshot.git);
        check_copy(&snapshot, &dest);
        assert!(dest.join("target/debug/big").exists(), "no .gitignore rules outside git");
    }

    #[test]
    fn a_git_work_tree_is_copied_without_ignored_files() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        tree(&src);
        let git = |args: &[&str]| {
            let ok = Command::new("git").args(args).current_dir(&src).output().map(|o| o.status.success());
            ok.unwrap_or(false)
        };
        if !git(&["init", "-q"]) {
            eprintln!("SKIPPED: no git");
            return;
        }
        assert!(git(&["add", "src/main.sh"]));
        std::fs::write(src.join("tracked-then-deleted"), "x").unwrap();
        assert!(git(&["add", "tracked-then-deleted"]));
        std::fs::remove_file(src.join("tracked-then-deleted")).unwrap();
        std::fs::create_dir(&dest).unwrap();
        let snapshot = Snapshot::of(&src).unwrap();
        assert!(snapshot.git);
        check_copy(&snapshot, &dest);
        assert!(dest.join(".gitignore").exists(), "untracked, not ignored: copied");
        assert!(!dest.join("target").exists(), "ignored: not copied");
        assert!(!dest.join("tracked-then-deleted").exists());
        assert!(!dest.join(".git").exists());
    }

    #[test]
    fn artifacts_are_collected_by_their_workspace_names() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("dist")).unwrap();
        std::fs::write(ws.join("dist/app"), "bin").unwrap();
        let note = collect(&ws, &["dist/**".into(), "none.txt".into()], &dir.path().join("out")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("out/dist/app")).unwrap(), "bin");
        assert!(
            note.starts_with("1 artifact file(s) copied") && note.ends_with("no files matched: none.txt"),
            "{note}"
        );
    }
}
