//! A job attempt's snapshots: the workspace restored at the start of a
//! resumed attempt, and taken after each step that succeeds while nothing
//! has failed (for jobs that keep snapshots).
//!
//! A snapshot never holds a secret value: not in a file, a name or a link
//! (see [`crate::snapshot::take`]), nor in the steps' outputs or plugin
//! states it carries. When one would, none is taken for that step — the
//! step's log says so — and a resume starts from an earlier one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use viaduct_proto::v1::{
    JobAssignment, JobRef, RestoreSnapshotRequest, SnapshotManifest, SnapshotStep, Status, StepPlan, step_plan::Action,
};

use crate::{
    files::Files,
    snapshot::{Known, Refused},
};

/// What a job's snapshots carry from one to the next.
pub(super) struct JobSnapshots {
    known: Known,
    /// Secret values (at least 4 bytes) a snapshot must not hold.
    secrets: Vec<String>,
    /// The steps so far: outcomes and outputs.
    steps: Vec<SnapshotStep>,
    /// Paths the checkout put in the workspace (files and links).
    source: HashSet<Vec<u8>>,
    /// Keys of the steps with `reuse:`, by index (see [`reuse_key`]).
    reuse_keys: BTreeMap<u32, String>,
}

/// An earlier run's snapshot this attempt started from.
pub(super) struct Reused {
    /// The steps up to this one are not run.
    pub after_step: u32,
    /// The run that took it.
    pub run_id: String,
    /// The job state it carries.
    pub restored: Restored,
}

/// The job state a restored snapshot carries.
pub(super) struct Restored {
    /// Outcomes and outputs of steps with an `id`, by id.
    pub outputs: HashMap<String, (Status, BTreeMap<String, String>)>,
    /// Plugin steps' post-phase states, by main step index.
    pub post_states: HashMap<u32, String>,
}

impl JobSnapshots {
    /// For attempt `a` (its secrets, and its registry credentials).
    pub fn new(a: &JobAssignment) -> Self {
        let secrets = a
            .secrets
            .values()
            .chain(std::iter::once(&a.registry_auth))
            .flat_map(|v| std::iter::once(v.as_str()).chain(v.lines()))
            .map(|v| v.trim_end_matches('\r'))
            .filter(|v| v.len() >= crate::mask::MIN_LEN)
            .map(String::from)
            .collect();
        Self { known: Known::new(), secrets, steps: Vec::new(), source: HashSet::new(), reuse_keys: BTreeMap::new() }
    }

    /// Restores the snapshot a resumed attempt starts from into the empty
    /// `workspace`.
    pub async fn restore(&mut self, files: &Files, job: &JobRef, workspace: &Path) -> Result<Restored, String> {
        let req = RestoreSnapshotRequest { job: Some(job.clone()), debug_session: String::new() };
        let manifest = files.restore_snapshot(req, workspace, None).await?;
        self.source = manifest.entries.iter().filter(|e| e.source).map(|e| e.path.clone()).collect();
        let ws = workspace.to_path_buf();
        let m = manifest.clone();
        self.known = tokio::task::spawn_blocking(move || Known::after_restore(&m, &ws))
            .await
            .map_err(|e| format!("the restore task failed: {e}"))?;
        self.steps.clone_from(&manifest.steps);
        Ok(restored_state(manifest))
    }

    /// After the checkout into `workspace`: what it put there, and the keys
    /// of the steps with `reuse:`.
    pub async fn after_checkout(&mut self, a: &JobAssignment, workspace: &Path) -> Result<(), String> {
        let (ws, a2) = (workspace.to_path_buf(), a.clone());
        let (source, keys) = tokio::task::spawn_blocking(move || {
            let source = checked_out(&ws)?;
            let keys = a2
                .steps
                .iter()
                .filter(|s| s.reuse.is_some())
                .map(|s| Ok((s.index, reuse_key(&a2, s.index, &ws)?)))
                .collect::<Result<BTreeMap<u32, String>, String>>()?;
            Ok::<_, String>((source, keys))
        })
        .await
        .map_err(|e| format!("the checkout walk failed: {e}"))??;
        self.source = source;
        self.reuse_keys = keys;
        Ok(())
    }

    /// Looks for an earlier run's snapshot after a step with `reuse:` (the
    /// last such step first) and restores it over the fresh checkout in
    /// `workspace`. An error leaves the workspace to be made again.
    pub async fn reuse(&mut self, files: &Files, job: &JobRef, workspace: &Path) -> Result<Option<Reused>, String> {
        for (&step, key) in self.reuse_keys.iter().rev() {
            let Some(run_id) = files.find_reuse(job, step, key).await? else { continue };
            let restored = self.restore_over_checkout(files, job, workspace).await?;
            return Ok(Some(Reused { after_step: step, run_id, restored }));
        }
        Ok(None)
    }

    /// Restores the earlier run's snapshot the attempt starts from (found
    /// by [`JobSnapshots::reuse`], or a resume from one) over the fresh
    /// checkout in `workspace`: its own checkout's files and whatever the
    /// new checkout holds are left out.
    pub async fn restore_over_checkout(
        &mut self,
        files: &Files,
        job: &JobRef,
        workspace: &Path,
    ) -> Result<Restored, String> {
        let req = RestoreSnapshotRequest { job: Some(job.clone()), debug_session: String::new() };
        let manifest = files.restore_snapshot(req, workspace, Some(&self.source)).await?;
        let (ws, m) = (workspace.to_path_buf(), manifest.clone());
        self.known = tokio::task::spawn_blocking(move || Known::after_restore(&m, &ws))
            .await
            .map_err(|e| format!("the restore task failed: {e}"))?;
        self.steps.clone_from(&manifest.steps);
        Ok(restored_state(manifest))
    }

    /// Records how step `index` (`id`) ended, for the snapshots after it.
    pub fn record(&mut self, index: u32, id: &str, status: Status, outputs: &BTreeMap<String, String>) {
        self.steps.push(SnapshotStep {
            index,
            id: id.to_string(),
            status: status as i32,
            outputs: outputs.clone().into_iter().collect(),
        });
    }

    /// Takes and saves the snapshot after step `current` (which
    /// succeeded); what the step's log should say when there is none.
    pub async fn take(
        &mut self,
        files: &Files,
        job: &JobRef,
        current: SnapshotStep,
        workspace: &Path,
        post_states: &HashMap<u32, String>,
    ) -> Option<String> {
        let index = current.index;
        let mut steps = self.steps.clone();
        steps.push(current);
        if let Some(why) = self.secret_in_state(&steps, post_states) {
            return Some(why);
        }
        let state = SnapshotManifest {
            steps,
            post_states: post_states.iter().map(|(k, v)| (*k, v.clone())).collect(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let reuse_key = self.reuse_keys.get(&index).map_or("", String::as_str);
        let saved = files
            .save_snapshot(
                (job, index, reuse_key),
                workspace,
                (self.known.clone(), self.secrets.clone()),
                state,
                &self.source,
            )
            .await;
        match saved {
            Ok(saved) => {
                self.known = saved.known;
                tracing::info!(step = index, ?saved.stats, ms = started.elapsed().as_millis() as u64, "snapshot saved");
                None
            }
            Err(e @ Refused::Secret { .. }) => Some(e.to_string()),
            Err(Refused::Error(e)) => {
                tracing::warn!(step = index, error = %e, "snapshot failed");
                Some(e)
            }
        }
    }

    /// Why the steps' outputs or plugin states cannot go in a snapshot (they
    /// hold a secret value).
    fn secret_in_state(&self, steps: &[SnapshotStep], post_states: &HashMap<u32, String>) -> Option<String> {
        let holds = |text: &str| self.secrets.iter().any(|s| text.contains(s.as_str()));
        for s in steps {
            if let Some(name) = s.outputs.iter().find(|(_, v)| holds(v)).map(|(k, _)| k) {
                return Some(format!("output `{name}` of step {} holds a secret value", s.index));
            }
        }
        post_states
            .iter()
            .find(|(_, v)| holds(v))
            .map(|(i, _)| format!("the state plugin step {i} keeps for its post phase holds a secret value"))
    }
}

/// The job state a manifest carries.
fn restored_state(manifest: SnapshotManifest) -> Restored {
    let outputs = manifest
        .steps
        .iter()
        .filter(|s| !s.id.is_empty())
        .map(|s| (s.id.clone(), (s.status(), s.outputs.clone().into_iter().collect())))
        .collect();
    Restored { outputs, post_states: manifest.post_states.into_iter().collect() }
}

/// Every entry a fresh checkout put in `workspace`, relative.
fn checked_out(workspace: &Path) -> Result<HashSet<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = HashSet::new();
    for entry in walkdir::WalkDir::new(workspace).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| format!("cannot read the checkout: {e}"))?;
        if let Ok(rel) = entry.path().strip_prefix(workspace) {
            out.insert(rel.as_os_str().as_bytes().to_vec());
        }
    }
    Ok(out)
}

/// The key under which the snapshot after step `step` (with `reuse:`) is
/// found by later runs: blake3 over what decides the workspace then — the
/// job's image, environment (not the run's own `VIADUCT_*` values) and
/// matrix values, the plan of every step up to it (scripts, plugins by
/// digest, their inputs, env, conditions) — and the paths and contents of
/// the step's key files in the fresh checkout.
pub(super) fn reuse_key(a: &JobAssignment, step: u32, workspace: &Path) -> Result<String, String> {
    let mut h = blake3::Hasher::new();
    let mut field = |text: &str| {
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    };
    field("viaduct reuse v2");
    // Where it runs: this machine's platform, the image (by name: a tag
    // that moves is not seen), its user, the services beside it.
    field(std::env::consts::OS);
    field(std::env::consts::ARCH);
    if let Some(i) = &a.image {
        for text in [&i.name, &i.user, &i.pull] {
            field(text);
        }
    }
    for s in &a.services {
        field(&s.name);
        field(s.image.as_ref().map_or("", |i| i.name.as_str()));
        for (k, v) in s.env.iter().collect::<BTreeMap<_, _>>() {
            field(k);
            field(v);
        }
        field(&s.command.join("\0"));
    }
    // Which secrets it is given (not their values: they never reach a
    // snapshot).
    for name in a.secrets.keys().collect::<std::collections::BTreeSet<_>>() {
        field(name);
    }
    let env: BTreeMap<&String, &String> =
        a.env.iter().filter(|(k, _)| !k.starts_with("VIADUCT_") && k.as_str() != "CI").collect();
    for (k, v) in env {
        field(k);
        field(v);
    }
    if let Some(ctx) = &a.context {
        for (what, values) in [("matrix", &ctx.matrix), ("inputs", &ctx.inputs)] {
            field(what);
            for (k, v) in values.iter().collect::<BTreeMap<_, _>>() {
                field(k);
                field(v);
            }
        }
        // What `${{ }}` in the steps resolves to at run time. A step before
        // it that uses the commit or the run makes every run's key its own
        // (its results depend on them).
        for text in [&ctx.branch, &ctx.tag, &ctx.event, &ctx.repo] {
            field(text);
        }
        let texts: String = a.steps.iter().filter(|s| s.index <= step).map(step_text).collect();
        if texts.contains("commit") || texts.contains("run_id") {
            field(&ctx.commit);
            field(&ctx.run_id);
        }
    }
    let mut key_files = Vec::new();
    for s in a.steps.iter().filter(|s| s.index <= step) {
        plan_fields(s, &mut field);
        if s.index == step {
            key_files = s.reuse.as_ref().map(|r| r.key_files.clone()).unwrap_or_default();
        }
    }
    for pattern in &key_files {
        field(pattern);
        let found = crate::files::artifacts::expand(workspace, pattern)?;
        if found.is_empty() {
            field("(no file)");
        }
        for (path, name) in found {
            let mut file = std::fs::File::open(&path).map_err(|e| format!("cannot read key file {name}: {e}"))?;
            let mut hash = blake3::Hasher::new();
            std::io::copy(&mut file, &mut hash).map_err(|e| format!("cannot read key file {name}: {e}"))?;
            field(&name);
            field(&hash.finalize().to_hex());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The texts of a step that may hold `${{ }}`: script, env, condition,
/// plugin inputs, working directory.
fn step_text(s: &StepPlan) -> String {
    let mut out = String::new();
    if let Some(Action::Run(r)) = &s.action {
        out.push_str(&r.script);
    }
    if let Some(Action::Uses(u)) = &s.action {
        out.extend(u.with_json.values().map(String::as_str));
    }
    out.extend(s.env.values().map(String::as_str));
    out.push_str(&s.condition);
    out.push_str(&s.working_directory);
    out
}

/// A step's plan as key fields, in a fixed order.
fn plan_fields(s: &StepPlan, field: &mut impl FnMut(&str)) {
    field(&s.index.to_string());
    field(&s.name);
    field(&s.id);
    match &s.action {
        Some(Action::Run(r)) => field(&r.script),
        Some(Action::Uses(u)) => {
            for text in [&u.plugin, &u.digest, &u.phase] {
                field(text);
            }
            for (k, v) in u.with_json.iter().collect::<BTreeMap<_, _>>() {
                field(k);
                field(v);
            }
            field(if u.allow_network { "network" } else { "" });
        }
        None => field(""),
    }
    for (k, v) in s.env.iter().collect::<BTreeMap<_, _>>() {
        field(k);
        field(v);
    }
    field(&s.condition);
    field(&s.working_directory);
    field(if s.continue_on_error { "continue" } else { "" });
}
