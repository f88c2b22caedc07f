//! A job attempt's snapshots: the workspace restored at the start of a
//! resumed attempt, and taken after each step that succeeds while nothing
//! has failed (for jobs that keep snapshots).
//!
//! A snapshot never holds a secret value: not in a file, a name or a link
//! (see [`crate::snapshot::take`]), nor in the steps' outputs or plugin
//! states it carries. When one would, none is taken for that step — the
//! step's log says so — and a resume starts from an earlier one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use viaduct_proto::v1::{JobAssignment, JobRef, RestoreSnapshotRequest, SnapshotManifest, SnapshotStep, Status};

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
        Self { known: Known::new(), secrets, steps: Vec::new() }
    }

    /// Restores the snapshot a resumed attempt starts from into the empty
    /// `workspace`.
    pub async fn restore(&mut self, files: &Files, job: &JobRef, workspace: &Path) -> Result<Restored, String> {
        let req = RestoreSnapshotRequest { job: Some(job.clone()), debug_session: String::new() };
        let manifest = files.restore_snapshot(req, workspace).await?;
        let ws = workspace.to_path_buf();
        let m = manifest.clone();
        self.known = tokio::task::spawn_blocking(move || Known::after_restore(&m, &ws))
            .await
            .map_err(|e| format!("the restore task failed: {e}"))?;
        self.steps.clone_from(&manifest.steps);
        let outputs = manifest
            .steps
            .iter()
            .filter(|s| !s.id.is_empty())
            .map(|s| (s.id.clone(), (s.status(), s.outputs.clone().into_iter().collect())))
            .collect();
        Ok(Restored { outputs, post_states: manifest.post_states.into_iter().collect() })
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
        let saved = files.save_snapshot(job, index, workspace, self.known.clone(), self.secrets.clone(), state).await;
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
