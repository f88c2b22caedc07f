//! `deploy`: atomic releases of a workspace path into the runner's deploy
//! directory, with rollback.
//!
//! ```yaml
//! - run: npm run build
//! - uses: deploy@1
//!   with: { source: dist, target: website }
//! ```
//!
//! The runner's deploy directory is preopened at `/deploy` (manifest mount
//! `deploy`). A deploy copies `source` into
//! `/deploy/<target>/releases/<release>` — through the host's `files.copy`,
//! so permission bits (the execute bit of programs), modification times and
//! symbolic links are kept — switches the `current` link to it atomically,
//! records the deployment in `deployments.log` and removes old releases
//! beyond `keep`. `rollback: true` switches `current` back to the release
//! deployed before it, without copying. See [`release`] for the layout.

#![warn(missing_docs)]

pub mod release;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;
use viaduct_plugin_common::time;
use viaduct_plugin_sdk::{
    Meta,
    files::{self, Copied},
    fs::workspace_path,
    markdown::{Table, bytes, code},
    prelude::*,
};

use crate::release::Record;

/// Where the runner's deploy directory is preopened.
pub const MOUNT: &str = "/deploy";

/// The `with:` inputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// Workspace file or directory to deploy (required unless `rollback`).
    #[serde(default, deserialize_with = "de::opt_string")]
    source: Option<String>,
    /// Name of the deployment: a directory of `/deploy`.
    #[serde(deserialize_with = "de::string")]
    target: String,
    /// Release id (default `<UTC yyyymmddThhmmssZ>-<commit12>`).
    #[serde(default, deserialize_with = "de::opt_string")]
    release: Option<String>,
    /// Releases to keep (default 5; the current and previous are always kept).
    #[serde(default = "default_keep", deserialize_with = "de::number")]
    keep: usize,
    /// Switch back to the release before the current one instead.
    #[serde(default, deserialize_with = "de::bool")]
    rollback: bool,
}

fn default_keep() -> usize {
    5
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `deploy` or `rollback`.
    pub action: &'static str,
    /// The target.
    pub target: String,
    /// The release now current.
    pub release: String,
    /// The release current before, if any.
    pub previous: Option<String>,
    /// The deployed source (deploys only) and what was copied.
    pub source: Option<(String, Copied)>,
    /// Releases removed by `keep`.
    pub removed: Vec<String>,
    /// Problems worth a warning (unreadable log lines).
    pub warnings: Vec<String>,
    /// The record appended to the log.
    pub record: Record,
}

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    let mount = Path::new(MOUNT);
    if !mount.is_dir() {
        bail!(
            "this runner has no deploy directory (the `deploy` mount at {MOUNT}): configure one on the runner, \
             or run this job on a runner that has it"
        );
    }
    let now = SystemTime::now();
    // The workspace is the current directory: "" keeps paths in messages as
    // given (`files::copy` makes them absolute for the host).
    let report = execute(mount, Path::new(""), &w, ctx.meta(), now, |from: &Path, to: &Path| files::copy(from, to))?;
    for warning in &report.warnings {
        ctx.warn(warning);
    }
    log_report(&ctx, &report);
    let path = release::display_path(&report.target, &report.release);
    Ok(Output::new()
        .set("release", &report.release)
        .set("path", path.display())
        .set("previous", report.previous.as_deref().unwrap_or(""))
        .set("removed", report.removed.join(","))
        .summary(summary(&report)))
}

fn log_report(ctx: &Context, r: &Report) {
    if let Some((src, c)) = &r.source {
        ctx.info(format!(
            "copied `{src}` to {}: {} files, {} links, {}",
            release::display_path(&r.target, &r.release).display(),
            c.files,
            c.links,
            bytes(c.bytes)
        ));
    }
    match &r.previous {
        Some(p) => {
            ctx.info(format!("{}: `current` of `{}` switched from `{p}` to `{}`", r.action, r.target, r.release))
        }
        None => ctx.info(format!("{}: `current` of `{}` is now `{}`", r.action, r.target, r.release)),
    }
    for old in &r.removed {
        ctx.info(format!("removed old release `{old}`"));
    }
}

/// Deploys or rolls back under `mount` (the deploy directory), reading the
/// source relative to `workspace` and copying it with `copy` (see
/// [`release::create`]; [`files::copy`] in the sandbox).
pub fn execute(
    mount: &Path,
    workspace: &Path,
    w: &With,
    meta: &Meta,
    now: SystemTime,
    copy: impl FnOnce(&Path, &Path) -> Result<Copied>,
) -> Result<Report> {
    release::check_name("target", w.target.trim())?;
    let target = w.target.trim().to_owned();
    ensure!(w.keep >= 1, "`keep` must be at least 1");
    let base = mount.join(&target);
    let stamp = time::Utc::from_system(now);
    let record_for = |action: &str, release: &str, previous: Option<String>| Record {
        time: stamp.rfc3339(),
        action: action.to_owned(),
        release: release.to_owned(),
        previous,
        commit: meta.commit.clone(),
        run_id: meta.run_id.clone(),
        job: meta.job_name.clone(),
        pipeline: meta.pipeline.clone(),
        repo: meta.repo.clone(),
        git_ref: meta.git_ref().to_owned(),
        runner: meta.runner.clone(),
    };

    if w.rollback {
        ensure!(w.source.is_none(), "`source` cannot be used with `rollback: true`");
        ensure!(w.release.is_none(), "`release` cannot be used with `rollback: true` (it goes back one release)");
        let current = release::current(&base)?
            .ok_or_else(|| Error::msg(format!("nothing to roll back: `{target}` has no current release")))?;
        let (records, warnings) = release::read_log(&base)?;
        let on_disk: BTreeSet<String> = release::list(&base)?.into_iter().collect();
        let to = release::rollback_target(&records, &current, &on_disk)?;
        release::switch(&base, &to)?;
        let record = record_for("rollback", &to, Some(current.clone()));
        release::append_log(&base, &record).map_err(|e| live(e, "rollback", &target, &to, Some(&current)))?;
        return Ok(Report {
            action: "rollback",
            target,
            release: to,
            previous: Some(current),
            source: None,
            removed: Vec::new(),
            warnings,
            record,
        });
    }

    let source =
        workspace_path("source", w.source.as_deref().ok_or_else(|| Error::msg("missing required input `source`"))?)?;
    let source_path: PathBuf = workspace.join(&source);
    ensure!(std::fs::symlink_metadata(&source_path).is_ok(), "`source` `{source}` does not exist in the workspace");
    let previous = release::current(&base)?;
    let id = match w.release.as_deref().map(str::trim) {
        Some(id) => {
            release::check_name("release", id)?;
            id.to_owned()
        }
        None => unique_id(&base, &default_id(stamp, meta)),
    };
    let copied = release::create(&base, &id, &source_path, copy)?;
    release::switch(&base, &id)?;
    let record = record_for("deploy", &id, previous.clone());
    let live = |e| live(e, "deploy", &target, &id, previous.as_deref());
    release::append_log(&base, &record).map_err(live)?;
    let (records, warnings) = release::read_log(&base).map_err(live)?;
    let mut protect = vec![id.as_str()];
    protect.extend(previous.as_deref());
    let removed = release::prune(&base, w.keep, &records, &protect).map_err(live)?;
    Ok(Report {
        action: "deploy",
        target,
        release: id.clone(),
        previous,
        source: Some((source, copied)),
        removed,
        warnings,
        record,
    })
}

/// An error after `current` was switched: the step fails, but `release`
/// is live. The outputs and the summary say so (later steps and people
/// see what is being served).
fn live(error: Error, action: &str, target: &str, release: &str, previous: Option<&str>) -> Error {
    let path = release::display_path(target, release);
    let mut t = Table::new(["", ""]);
    t.row(["Target", &code(target)]);
    t.row(["Release", &code(release)]);
    t.row(["Previous".to_owned(), previous.map_or_else(|| "—".to_owned(), code)]);
    t.row(["Path", &code(&path.display().to_string())]);
    error.output("release", release).output("path", path.display()).output("previous", previous.unwrap_or("")).summary(
        format!(
            "### {} {} failed after the switch\n\n`current` now points to {}: the {action} took effect, \
             but what followed it failed (see the error).\n\n{t}",
            if action == "rollback" { "Rollback of" } else { "Deploy of" },
            code(target),
            code(release)
        ),
    )
}

/// `<UTC yyyymmddThhmmssZ>-<commit12>` (just the time without a commit;
/// shared with `container-deploy`).
pub fn default_id(at: time::Utc, meta: &Meta) -> String {
    viaduct_plugin_common::release::default_id(at, &meta.commit)
}

/// `id`, or `id-2`, `id-3`, … when a release of that name exists (two
/// deploys of one commit within a second).
fn unique_id(base: &Path, id: &str) -> String {
    let releases = base.join(release::RELEASES);
    let taken = |name: &str| std::fs::symlink_metadata(releases.join(name)).is_ok();
    if !taken(id) {
        return id.to_owned();
    }
    (2..).map(|n| format!("{id}-{n}")).find(|c| !taken(c)).expect("an unused suffix")
}

/// The markdown summary.
pub fn summary(r: &Report) -> String {
    let mut t = Table::new(["", ""]);
    t.row(["Target", &code(&r.target)]);
    t.row(["Release", &code(&r.release)]);
    t.row(["Previous".to_owned(), r.previous.as_deref().map_or_else(|| "—".to_owned(), code)]);
    if let Some((src, c)) = &r.source {
        t.row(["Source".to_owned(), format!("{} — {} files, {}", code(src), c.files, bytes(c.bytes))]);
    }
    if !r.record.commit.is_empty() {
        t.row(["Commit", &code(&r.record.commit)]);
    }
    t.row(["Path", &code(&release::display_path(&r.target, &r.release).display().to_string())]);
    t.row(["Time", &r.record.time]);
    if !r.removed.is_empty() {
        t.row(["Removed".to_owned(), r.removed.iter().map(|x| code(x)).collect::<Vec<_>>().join(", ")]);
    }
    let title = if r.action == "rollback" { "Rolled back" } else { "Deployed" };
    format!("### {title} {}\n\n{t}", code(&r.target))
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn with(json: serde_json::Value) -> With {
        serde_json::from_value(json).unwrap()
    }

    fn meta(commit: &str) -> Meta {
        Meta { commit: commit.into(), run_id: "01RUN".into(), branch: "main".into(), ..Meta::default() }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// [`execute`] with a native stand-in for the host's copy.
    fn deploy(mount: &Path, workspace: &Path, w: &With, meta: &Meta, now: SystemTime) -> Result<Report> {
        execute(mount, workspace, w, meta, now, release::tests_support::copy)
    }

    #[test]
    fn deploy_prune_and_rollback() {
        let root = release::tests_support::temp("flow");
        let (ws, mount) = (root.join("ws"), root.join("deploy"));
        std::fs::create_dir_all(ws.join("dist")).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        let mut ids = Vec::new();
        for i in 0..4u64 {
            std::fs::write(ws.join("dist/index.html"), format!("v{i}")).unwrap();
            let r = deploy(
                &mount,
                &ws,
                &with(serde_json::json!({"source": "dist", "target": "site", "keep": "2"})),
                &meta(&format!("{i}bcdef0123456789")),
                at(1_735_689_600 + i),
            )
            .unwrap();
            assert_eq!(r.previous, ids.last().cloned());
            ids.push(r.release.clone());
            // keep 2: the third deploy removes the first, the fourth the second.
            let expected_removed: Vec<String> = if i >= 2 { vec![ids[i as usize - 2].clone()] } else { vec![] };
            assert_eq!(r.removed, expected_removed);
            if i == 3 {
                let md = summary(&r);
                assert!(md.starts_with("### Deployed `site`\n\n"), "{md}");
                assert!(md.contains("| Source | `dist` — 1 files, 2 B |"), "{md}");
            }
        }
        assert_eq!(ids[0], "20250101T000000Z-0bcdef012345");
        let current = |m: &Path| std::fs::read_to_string(m.join("site/current/index.html")).unwrap();
        assert_eq!(current(&mount), "v3");

        let r = deploy(
            &mount,
            &ws,
            &with(serde_json::json!({"target": "site", "rollback": true})),
            &meta("x"),
            at(2_000_000_000),
        )
        .unwrap();
        assert_eq!((r.release.as_str(), r.previous.as_deref()), (ids[2].as_str(), Some(ids[3].as_str())));
        assert_eq!(current(&mount), "v2");
        assert!(summary(&r).starts_with("### Rolled back `site`"));
        // v1 and v0 were pruned: nothing further back.
        let e = deploy(
            &mount,
            &ws,
            &with(serde_json::json!({"target": "site", "rollback": true})),
            &meta("x"),
            at(2_000_000_001),
        )
        .unwrap_err();
        assert!(e.message().contains("no earlier release"), "{e}");

        let (records, problems) = release::read_log(&mount.join("site")).unwrap();
        assert!(problems.is_empty());
        assert_eq!(records.len(), 5);
        assert_eq!(records[4].action, "rollback");
        assert_eq!(records[4].git_ref, "main");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn same_second_same_commit_gets_a_suffix_and_explicit_ids_are_unique() {
        let root = release::tests_support::temp("ids");
        let (ws, mount) = (root.join("ws"), root.join("deploy"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("app.bin"), "x").unwrap();
        let w = with(serde_json::json!({"source": "app.bin", "target": "app"}));
        let a = deploy(&mount, &ws, &w, &meta(""), at(0)).unwrap();
        let b = deploy(&mount, &ws, &w, &meta(""), at(0)).unwrap();
        assert_eq!((a.release.as_str(), b.release.as_str()), ("19700101T000000Z", "19700101T000000Z-2"));
        let w = with(serde_json::json!({"source": "app.bin", "target": "app", "release": "v1"}));
        deploy(&mount, &ws, &w, &meta(""), at(5)).unwrap();
        assert!(deploy(&mount, &ws, &w, &meta(""), at(6)).unwrap_err().message().contains("already exists"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failure_after_the_switch_says_what_is_live() {
        let root = release::tests_support::temp("after-switch");
        let (ws, mount) = (root.join("ws"), root.join("deploy"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("app.bin"), "x").unwrap();
        // The log cannot be appended to: a directory is in its way.
        std::fs::create_dir_all(mount.join("app").join(release::LOG)).unwrap();
        let w = with(serde_json::json!({"source": "app.bin", "target": "app", "release": "v1"}));
        let e = deploy(&mount, &ws, &w, &meta(""), at(0)).unwrap_err();
        assert!(e.message().starts_with("cannot open `"), "{e}");
        assert_eq!(release::current(&mount.join("app")).unwrap().as_deref(), Some("v1"));
        let outputs: Vec<(&str, &str)> = e.outputs().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(outputs, [("release", "v1"), ("path", "app/releases/v1"), ("previous", "")]);
        let md = e.summary_text().unwrap();
        assert!(md.starts_with("### Deploy of `app` failed after the switch\n\n`current` now points to `v1`"), "{md}");
        assert!(md.contains("| Previous | — |"), "{md}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn input_errors() {
        let root = release::tests_support::temp("inputs");
        let run = |json: serde_json::Value| {
            deploy(&root, &root, &with(json), &meta(""), at(0)).unwrap_err().message().to_owned()
        };
        assert!(run(serde_json::json!({"source": "x", "target": "../etc"})).contains("must be a simple name"));
        assert!(run(serde_json::json!({"source": "x", "target": "a/b"})).contains("must be a simple name"));
        assert!(run(serde_json::json!({"source": "nope", "target": "t"})).contains("does not exist in the workspace"));
        assert!(run(serde_json::json!({"source": "/etc", "target": "t"})).contains("relative to the workspace"));
        assert!(run(serde_json::json!({"target": "t"})).contains("missing required input `source`"));
        assert!(run(serde_json::json!({"target": "t", "keep": 0})).contains("at least 1"));
        assert!(run(serde_json::json!({"target": "t", "rollback": true})).contains("has no current release"));
        assert!(run(serde_json::json!({"target": "t", "rollback": true, "source": "x"})).contains("cannot be used"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
