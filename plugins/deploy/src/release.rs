//! Releases of one deploy target, on disk:
//!
//! ```text
//! <target>/
//!   releases/<id>/…        one directory per release, never modified once in place
//!   current -> releases/<id>   relative symlink, switched atomically
//!   deployments.log        one JSON object per line: every deploy and rollback
//! ```
//!
//! All functions take the target's directory, so they run natively in tests
//! and on `/deploy/<target>` in the sandbox; [`create`] also takes the copy
//! function (the host's in the sandbox, a native one in tests).

use std::{
    collections::BTreeSet,
    io::{self, Write},
    path::{Component, Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use viaduct_plugin_common::release as common;
use viaduct_plugin_sdk::{Error, Result, ResultExt, files::Copied};

/// The directory of releases inside a target.
pub const RELEASES: &str = "releases";
/// The link to the live release.
pub const CURRENT: &str = "current";
/// The deployment log.
pub const LOG: &str = "deployments.log";
/// Prefix of directories being copied (renamed into place when complete).
const TMP_PREFIX: &str = ".tmp-";
/// A directory source is copied to `.tmp-<id>/TREE`, then moved out.
const TREE: &str = "release";
/// Abandoned copies older than this are removed.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// One line of `deployments.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// `deploy` or `rollback`.
    pub action: String,
    /// The release made current.
    pub release: String,
    /// The release current before (none for a first deploy).
    #[serde(default)]
    pub previous: Option<String>,
    /// Commit SHA of the run.
    #[serde(default)]
    pub commit: String,
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Job name.
    #[serde(default)]
    pub job: String,
    /// Pipeline.
    #[serde(default)]
    pub pipeline: String,
    /// Repository.
    #[serde(default)]
    pub repo: String,
    /// Branch or tag.
    #[serde(default, rename = "ref")]
    pub git_ref: String,
    /// Runner machine.
    #[serde(default)]
    pub runner: String,
}

/// Checks a target or release name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most
/// 128 bytes — a single path component that cannot be `..` or hidden (the
/// rule of [`viaduct_plugin_common::release::check_name`]).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    common::check_name(what, name).map_err(Error::msg)
}

/// The release the `current` link points to, if any.
pub fn current(base: &Path) -> Result<Option<String>> {
    let link = base.join(CURRENT);
    let meta = match std::fs::symlink_metadata(&link) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::from(e).context(format!("cannot inspect `{}`", link.display()))),
    };
    if !meta.file_type().is_symlink() {
        return Err(Error::msg(format!("`{}` exists but is not a symbolic link: move it away first", link.display())));
    }
    let target = std::fs::read_link(&link).with_context(|| format!("cannot read the link `{}`", link.display()))?;
    let mut parts = target.components();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Component::Normal(dir)), Some(Component::Normal(id)), None) if dir == RELEASES => {
            Ok(Some(id.to_string_lossy().into_owned()))
        }
        _ => Err(Error::msg(format!(
            "`{}` points to `{}`, not to `{RELEASES}/<release>`: fix or remove it",
            link.display(),
            target.display()
        ))),
    }
}

/// Points `current` at `releases/<id>` atomically: a new relative link is
/// created next to it and renamed over it, so readers see the old or the
/// new release, never neither.
pub fn switch(base: &Path, id: &str) -> Result<()> {
    let tmp = base.join(format!(".{CURRENT}-{id}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::from(e).context(format!("cannot remove `{}`", tmp.display())));
        }
        _ => {}
    }
    viaduct_plugin_sdk::fs::symlink(format!("{RELEASES}/{id}"), &tmp)
        .with_context(|| format!("cannot create the link `{}`", tmp.display()))?;
    std::fs::rename(&tmp, base.join(CURRENT)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::from(e).context(format!("cannot switch `{}`", base.join(CURRENT).display()))
    })
}

/// Fills a new release `id` with `source` (a file or a directory) using
/// `copy`, which copies a file or tree to a path that does not exist yet
/// (its parent does) and leaves nothing of it on error — in the sandbox,
/// [`files::copy`](viaduct_plugin_sdk::files::copy): the host copies,
/// keeping permission bits (executables stay executable), modification
/// times and the symbolic links that stay inside `source`, and refusing
/// the others.
///
/// A directory's contents become the release; a file is copied into it
/// under its name. The copy is made inside a hidden `releases/.tmp-<id>/`
/// and renamed into place when complete, so a release directory is never
/// partial; on error nothing of the release is left. (The hidden directory
/// is created here, not by the copy, so its modification time says when
/// the copy started even though the copy keeps the source's times: copies
/// abandoned for a day are removed by [`prune`].)
pub fn create(
    base: &Path,
    id: &str,
    source: &Path,
    copy: impl FnOnce(&Path, &Path) -> Result<Copied>,
) -> Result<Copied> {
    let meta = std::fs::symlink_metadata(source).with_context(|| format!("cannot read `{}`", source.display()))?;
    let file_name = if meta.is_dir() {
        None
    } else if meta.is_file() {
        Some(source.file_name().ok_or_else(|| Error::msg(format!("`{}` has no file name", source.display())))?)
    } else {
        return Err(Error::msg(format!("`{}` is neither a file nor a directory", source.display())));
    };
    let releases = base.join(RELEASES);
    std::fs::create_dir_all(&releases).with_context(|| format!("cannot create `{}`", releases.display()))?;
    let dest = releases.join(id);
    if std::fs::symlink_metadata(&dest).is_ok() {
        return Err(Error::msg(format!("release `{id}` already exists in `{}`", releases.display())));
    }
    let tmp = releases.join(format!("{TMP_PREFIX}{id}"));
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the abandoned copy `{}`", tmp.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
    let move_into_place = |from: &Path| {
        std::fs::rename(from, &dest).with_context(|| format!("cannot move the release into `{}`", dest.display()))
    };
    let copied = match file_name {
        // The file in the hidden directory, which becomes the release.
        Some(name) => copy(source, &tmp.join(name)).and_then(|copied| {
            move_into_place(&tmp)?;
            Ok(copied)
        }),
        // The tree inside the hidden directory, moved out of it when complete.
        None => {
            let tree = tmp.join(TREE);
            copy(source, &tree).and_then(|copied| {
                move_into_place(&tree)?;
                // Empty now; left behind, it is removed as a stale copy.
                let _ = std::fs::remove_dir(&tmp);
                Ok(copied)
            })
        }
    };
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    copied
}

/// Every record of the log, oldest first; unreadable lines are returned as
/// warnings (line number and problem) instead of failing.
pub fn read_log(base: &Path) -> Result<(Vec<Record>, Vec<String>)> {
    let path = base.join(LOG);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(Error::from(e).context(format!("cannot read `{}`", path.display()))),
    };
    let mut records = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            Err(e) => problems.push(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    Ok((records, problems))
}

/// Appends a record to the log (one `write` of one line).
pub fn append_log(base: &Path, record: &Record) -> Result<()> {
    let path = base.join(LOG);
    let mut line = serde_json::to_string(record).context("cannot encode the deployment record")?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    f.write_all(line.as_bytes()).with_context(|| format!("cannot append to `{}`", path.display()))?;
    Ok(())
}

/// The releases on disk (not the copies in progress), by name.
pub fn list(base: &Path) -> Result<Vec<String>> {
    let dir = base.join(RELEASES);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::from(e).context(format!("cannot list `{}`", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list `{}`", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The release to roll back to from `current`: the one deployed before
/// `current`'s latest deploy (per the log) that is still on disk. Rolling
/// back repeatedly walks further back.
pub fn rollback_target(records: &[Record], current: &str, on_disk: &BTreeSet<String>) -> Result<String> {
    common::rollback_target(&deploys(records), current, on_disk).map_err(Error::msg)
}

/// The releases of the log's deploys, oldest first.
fn deploys(records: &[Record]) -> Vec<&str> {
    records.iter().filter(|r| r.action == "deploy").map(|r| r.release.as_str()).collect()
}

/// Removes all but the newest `keep` releases (newest by their latest
/// deploy in the log; releases missing from the log count as oldest, by
/// name), never one in `protect`. Also removes copies abandoned for a day.
/// Returns the removed releases.
pub fn prune(base: &Path, keep: usize, records: &[Record], protect: &[&str]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in common::prunable(&list(base)?, &deploys(records), keep, protect) {
        let path = base.join(RELEASES).join(&name);
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove the old release `{}`", path.display()))?;
        removed.push(name);
    }
    remove_stale_copies(&base.join(RELEASES));
    Ok(removed)
}

fn remove_stale_copies(releases: &Path) {
    let Ok(entries) = std::fs::read_dir(releases) else { return };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP);
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Path of a release relative to the deploy directory: `<target>/releases/<id>`.
pub fn display_path(target: &str, id: &str) -> PathBuf {
    Path::new(target).join(RELEASES).join(id)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::{Path, PathBuf};

    use viaduct_plugin_sdk::{Result, files::Copied};

    /// A fresh directory for one test.
    pub fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("viaduct-deploy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// What the host's `files.copy` does, for native tests: a file or tree
    /// to a new path, keeping modes (`std::fs::copy` does on Unix) and
    /// links (not checked: refusing outward links is the host's part).
    pub fn copy(source: &Path, dest: &Path) -> Result<Copied> {
        assert!(std::fs::symlink_metadata(dest).is_err(), "{} exists", dest.display());
        let mut copied = Copied::default();
        copy_entry(source, dest, &mut copied)?;
        Ok(copied)
    }

    fn copy_entry(from: &Path, to: &Path, copied: &mut Copied) -> Result<()> {
        let kind = std::fs::symlink_metadata(from)?.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
            copied.links += 1;
        } else if kind.is_dir() {
            std::fs::create_dir(to)?;
            for entry in std::fs::read_dir(from)? {
                let entry = entry?;
                copy_entry(&entry.path(), &to.join(entry.file_name()), copied)?;
            }
        } else {
            copied.bytes += std::fs::copy(from, to)?;
            copied.files += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{tests_support::temp, *};

    fn record(action: &str, release: &str) -> Record {
        Record {
            time: "2025-01-01T00:00:00Z".into(),
            action: action.into(),
            release: release.into(),
            previous: None,
            commit: String::new(),
            run_id: String::new(),
            job: String::new(),
            pipeline: String::new(),
            repo: String::new(),
            git_ref: String::new(),
            runner: String::new(),
        }
    }

    #[test]
    fn names() {
        for ok in ["web", "api-v2", "a.b_c", "0"] {
            check_name("target", ok).unwrap();
        }
        for bad in ["", "..", ".hidden", "a/b", "-x", "a b", &"x".repeat(129)] {
            assert!(check_name("target", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_switch_and_read_back() {
        use std::os::unix::fs::PermissionsExt;

        let root = temp("create");
        let src = root.join("src");
        std::fs::create_dir_all(src.join("assets/img")).unwrap();
        std::fs::write(src.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(src.join("assets/img/logo.svg"), "<svg/>").unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("assets/img/logo.svg", src.join("logo.svg")).unwrap();
        let base = root.join("deploy/web");

        assert_eq!(current(&base).unwrap(), None);
        let copied = create(&base, "r1", &src, |from: &Path, to: &Path| {
            assert_eq!(to, base.join("releases/.tmp-r1/release"));
            tests_support::copy(from, to)
        })
        .unwrap();
        assert_eq!(copied, Copied { files: 3, links: 1, bytes: 27 });
        assert!(!base.join("releases/.tmp-r1").exists());
        switch(&base, "r1").unwrap();
        assert_eq!(current(&base).unwrap().as_deref(), Some("r1"));
        assert_eq!(std::fs::read_to_string(base.join("current/index.html")).unwrap(), "<h1>hi</h1>");
        assert_eq!(std::fs::read_to_string(base.join("current/logo.svg")).unwrap(), "<svg/>");
        let mode = std::fs::metadata(base.join("current/run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let e = create(&base, "r1", &src, |_: &Path, _: &Path| -> Result<Copied> { panic!("not called") });
        assert!(e.unwrap_err().message().contains("already exists"));

        // A single file goes into the release under its name; switching
        // replaces an existing link.
        let copied = create(&base, "r2", &src.join("index.html"), |from: &Path, to: &Path| {
            assert_eq!(to, base.join("releases/.tmp-r2/index.html"));
            tests_support::copy(from, to)
        })
        .unwrap();
        assert_eq!((copied.files, copied.bytes), (1, 11));
        switch(&base, "r2").unwrap();
        assert_eq!(current(&base).unwrap().as_deref(), Some("r2"));
        assert_eq!(std::fs::read_to_string(base.join("current/index.html")).unwrap(), "<h1>hi</h1>");
        assert_eq!(list(&base).unwrap(), ["r1", "r2"]);
        assert!(!base.join(".current-r2.tmp").exists());

        std::os::unix::fs::symlink("index.html", src.join("link-only")).unwrap();
        let e = create(&base, "r3", &src.join("link-only"), tests_support::copy).unwrap_err();
        assert!(e.message().contains("neither a file nor a directory"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_copy_leaves_nothing() {
        let root = temp("failed");
        let src = root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        let base = root.join("deploy/x");
        // The copy leaves a partial tree behind (which the host would not).
        let half = |_: &Path, to: &Path| -> Result<Copied> {
            std::fs::create_dir_all(to.join("half")).unwrap();
            Err(Error::msg("a link leads outside the source"))
        };
        for source in [src.clone(), src.join("a.txt")] {
            let e = create(&base, "r1", &source, half).unwrap_err();
            assert_eq!(e.message(), "a link leads outside the source");
            assert!(list(&base).unwrap().is_empty());
            assert_eq!(std::fs::read_dir(base.join(RELEASES)).unwrap().count(), 0, "the partial copy is removed");
        }
        // An abandoned copy of the same release is replaced.
        std::fs::create_dir_all(base.join(RELEASES).join(".tmp-r1/old")).unwrap();
        create(&base, "r1", &src, tests_support::copy).unwrap();
        assert!(base.join("releases/r1/a.txt").is_file() && !base.join("releases/r1/old").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn current_must_be_a_release_link() {
        let root = temp("current");
        std::fs::create_dir_all(root.join(CURRENT)).unwrap();
        assert!(current(&root).unwrap_err().message().contains("is not a symbolic link"));
        std::fs::remove_dir_all(root.join(CURRENT)).unwrap();
        std::os::unix::fs::symlink("/srv/www", root.join(CURRENT)).unwrap();
        assert!(current(&root).unwrap_err().message().contains("not to `releases/<release>`"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn log_round_trip_skips_bad_lines() {
        let root = temp("log");
        append_log(&root, &record("deploy", "r1")).unwrap();
        std::fs::OpenOptions::new().append(true).open(root.join(LOG)).unwrap().write_all(b"garbage\n\n").unwrap();
        append_log(&root, &record("rollback", "r0")).unwrap();
        let (records, problems) = read_log(&root).unwrap();
        assert_eq!(records.iter().map(|r| r.release.as_str()).collect::<Vec<_>>(), ["r1", "r0"]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains(":2: "), "{problems:?}");
        let line = std::fs::read_to_string(root.join(LOG)).unwrap();
        assert!(
            line.starts_with(r#"{"time":"2025-01-01T00:00:00Z","action":"deploy","release":"r1","previous":null,"#),
            "{line}"
        );
        assert!(line.contains(r#""ref":"""#));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn rollback_walks_back_through_deploys() {
        let log = [record("deploy", "a"), record("deploy", "b"), record("deploy", "c"), record("rollback", "b")];
        let disk: BTreeSet<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
        assert_eq!(rollback_target(&log, "c", &disk).unwrap(), "b");
        assert_eq!(rollback_target(&log, "b", &disk).unwrap(), "a");
        assert!(rollback_target(&log, "a", &disk).unwrap_err().message().contains("no earlier release"));
        let pruned: BTreeSet<String> = ["b", "c"].into_iter().map(String::from).collect();
        assert!(rollback_target(&log, "c", &pruned).is_ok());
        let only_c: BTreeSet<String> = ["c"].into_iter().map(String::from).collect();
        assert!(rollback_target(&log, "c", &only_c).is_err(), "a and b are gone");
        assert!(rollback_target(&log, "zz", &disk).unwrap_err().message().contains("not in the log"));
        // Redeploying an old release makes it the newest.
        let log = [record("deploy", "a"), record("deploy", "b"), record("deploy", "a")];
        assert_eq!(rollback_target(&log, "a", &disk).unwrap(), "b");
    }

    #[test]
    fn prune_keeps_newest_and_protected() {
        let root = temp("prune");
        for r in ["a", "b", "c", "d", "manual", ".tmp-e"] {
            std::fs::create_dir_all(root.join(RELEASES).join(r)).unwrap();
        }
        let log = [record("deploy", "a"), record("deploy", "b"), record("deploy", "c"), record("deploy", "d")];
        let removed = prune(&root, 2, &log, &["a"]).unwrap();
        assert_eq!(removed, ["b", "manual"]);
        assert_eq!(list(&root).unwrap(), ["a", "c", "d"]);
        assert!(root.join(RELEASES).join(".tmp-e").exists(), "a fresh copy in progress is left alone");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
