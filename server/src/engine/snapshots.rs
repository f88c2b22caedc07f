//! Workspace snapshots, as the engine sees them: which attempt may save
//! one, recording it with its step, and where a resumed attempt starts.
//!
//! A snapshot's record lives in the `snapshots` tree under its step's key
//! (run, job, attempt, step), so a run's removal takes its snapshots too
//! (`prune`). The blobs — the manifest and the packs — are the depot's
//! (`crate::snapshots`).

use std::collections::BTreeSet;

use viaduct_proto::v1::Status;

use super::{Engine, dispatch::holds, tx::Tx};
use crate::{
    error::{Error, Result},
    store::{
        T, decode,
        keys::{JobKey, StepKey},
        records::{JobRecord, ResumeRecord, SnapshotRecord},
    },
};

/// Where a retry resumes (the API's `RetryFrom`).
#[derive(Debug, Clone, Default)]
pub struct ResumeFrom {
    /// The job (id, key or name); `None`: every job that did not succeed.
    pub job: Option<String>,
    /// The step to start at (1-based); 0: the job's first step that failed.
    pub step: u32,
}

/// The snapshots of one job, every attempt: (step key, record).
fn of_job(store: &crate::store::Store, job: JobKey) -> Result<Vec<(StepKey, SnapshotRecord)>> {
    let mut out = Vec::new();
    for kv in store.tree(T::Snapshots).scan_prefix(job.key()) {
        let (k, v) = kv?;
        if let Some(key) = StepKey::from_key(&k) {
            out.push((key, decode(T::Snapshots, &v)?));
        }
    }
    Ok(out)
}

impl Engine {
    /// The record of attempt `attempt` of `job`, which `runner` holds and
    /// which takes snapshots, for a snapshot after step `step`; and the
    /// packs the job's snapshots already stored (the only ones a new
    /// manifest may point into), and the bytes its snapshots stored.
    pub fn snapshot_target(
        &self,
        runner: &str,
        job: JobKey,
        attempt: u32,
        step: u32,
    ) -> Result<(JobRecord, BTreeSet<String>, u64)> {
        let rec = self.leased_job(runner, job, attempt)?;
        let reused = StepKey::from_key(&rec.reused_from);
        if !rec.snapshots {
            return Err(Error::precondition(format!(
                "job {job} does not take snapshots (`snapshots: true` in its pipeline, or the server's --snapshots)"
            )));
        }
        if step == 0 || step as usize > rec.steps.len() {
            return Err(Error::invalid(format!("job {job} has no step {step}")));
        }
        let stored = of_job(self.store(), job)?;
        let used = stored.iter().map(|(_, r)| r.pack_size).sum();
        let mut packs: BTreeSet<String> = stored.into_iter().flat_map(|(_, r)| r.packs).collect();
        // A job that started from another run's snapshot builds on its packs.
        if let Some(Ok(from)) = reused.map(|from| self.snapshot(from)) {
            packs.extend(from.packs);
        }
        Ok((rec, packs, used))
    }

    /// Records the snapshot after step `key`, with the step's `snapshot`
    /// flag, if `runner` still holds the attempt; returns once durable.
    /// With `reuse_key` (the step has `reuse:`), later runs may find it —
    /// when this run is trusted.
    pub async fn record_snapshot(
        &self,
        runner: &str,
        key: StepKey,
        (rec, new_pack): (SnapshotRecord, Option<&str>),
        reuse_key: &str,
    ) -> Result<()> {
        let new_pack = new_pack.unwrap_or_default();
        let ((), ticket) = self.transition(|t| {
            if !holds(t.st, runner, key.job, key.attempt) {
                return Err(Error::PermissionDenied(format!(
                    "runner {runner} does not hold job {} attempt {}",
                    key.job, key.attempt
                )));
            }
            // The earlier packs it builds on must still be kept (retention
            // may have removed their snapshots since the upload began).
            let job = t.job_ref(key.job)?.clone();
            let mut kept: BTreeSet<String> =
                of_job(t.store(), key.job)?.into_iter().flat_map(|(_, r)| r.packs).collect();
            if let Some(from) = StepKey::from_key(&job.reused_from)
                && let Some(r) = t.store().get::<SnapshotRecord>(T::Snapshots, from.key())?
            {
                kept.extend(r.packs);
            }
            let earlier = rec.packs.iter().filter(|p| p.as_str() != new_pack);
            if let Some(gone) = earlier.into_iter().find(|p| !kept.contains(*p)) {
                return Err(Error::precondition(format!(
                    "pack {gone} of an earlier snapshot of job {} is gone (expired): the snapshot is not kept",
                    key.job
                )));
            }
            t.writes().put(T::Snapshots, key.key(), &rec);
            t.step(key)?.snapshot = true;
            if !reuse_key.is_empty()
                && let Some(index) = reuse_index_key(&job, key.index, reuse_key)?.filter(|_| !job.untrusted)
            {
                t.writes().put_raw(T::ReuseIndex, index, key.key().to_vec());
            }
            Ok(())
        })?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }

    /// The snapshot a resumed attempt that `runner` holds starts from (or
    /// the earlier run's it found to reuse), with its step's key.
    pub fn resume_snapshot(&self, runner: &str, job: JobKey, attempt: u32) -> Result<(StepKey, SnapshotRecord)> {
        let rec = self.leased_job(runner, job, attempt)?;
        if let Some(from) = StepKey::from_key(&rec.reused_from) {
            return Ok((from, self.snapshot(from)?));
        }
        let resume =
            rec.resume.ok_or_else(|| Error::precondition(format!("job {job} attempt {attempt} is not resumed")))?;
        let key = job.step(resume.from_attempt, resume.after_step);
        Ok((key, self.snapshot(key)?))
    }

    /// Looks for an earlier run's snapshot after step `step` of the job
    /// attempt `runner` holds, under `key` (see `FindReuseRequest.key`):
    /// found (and still kept), the attempt may restore it, and the run it
    /// came from is returned. Only trusted runs' snapshots are ever found.
    pub async fn find_reuse(
        &self,
        runner: &str,
        job: JobKey,
        attempt: u32,
        step: u32,
        key: &str,
    ) -> Result<Option<crate::store::keys::RunId>> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid("a reuse key is 64 hex digits (blake3)"));
        }
        let (found, ticket) = self.transition(|t| {
            if !holds(t.st, runner, job, attempt) {
                return Err(Error::PermissionDenied(format!(
                    "runner {runner} does not hold job {job} attempt {attempt}"
                )));
            }
            let rec = t.job_ref(job)?.clone();
            let Some(index) = reuse_index_key(&rec, step, key)? else {
                return Err(Error::invalid(format!("step {step} of job {job} has no `reuse:`")));
            };
            let target = t.store().tree(T::ReuseIndex).get(&index)?.and_then(|v| StepKey::from_key(&v));
            let Some(from) = target.filter(|k| k.job.run != job.run) else { return Ok(None) };
            if t.store().get::<SnapshotRecord>(T::Snapshots, from.key())?.is_none() {
                return Ok(None);
            }
            t.job(job)?.reused_from = from.key().to_vec();
            Ok(Some(from.job.run))
        })?;
        self.store().wait_durable(ticket).await;
        Ok(found)
    }

    /// The snapshot after step `key`.
    pub fn snapshot(&self, key: StepKey) -> Result<SnapshotRecord> {
        self.store().get(T::Snapshots, key.key())?.ok_or_else(|| {
            Error::not_found(format!(
                "the snapshot after step {} of job {} attempt {} is gone (expired, or its run was removed)",
                key.index, key.job, key.attempt
            ))
        })
    }

    /// The newest snapshot of `job` after step `step` (0: after any step)
    /// — of the latest attempt that has one.
    pub fn newest_snapshot(&self, job: JobKey, step: u32) -> Result<(StepKey, SnapshotRecord)> {
        of_job(self.store(), job)?
            .into_iter()
            .filter(|(k, _)| step == 0 || k.index == step)
            .max_by_key(|(k, _)| (k.attempt, k.index))
            .ok_or_else(|| match step {
                0 => Error::not_found(format!("job {job} has no snapshot (does its pipeline say `snapshots: true`?)")),
                s => Error::not_found(format!("job {job} has no snapshot after step {s}")),
            })
    }

    /// Removes the snapshots taken before `older_than_ms`, and those of
    /// runs past the newest `keep_runs` of their pipeline that have any;
    /// clears their steps' flags. Returns how many went.
    pub fn expire_snapshots(&self, older_than_ms: i64, keep_runs: usize) -> Result<usize> {
        let mut runs_of: std::collections::HashMap<String, BTreeSet<u64>> = std::collections::HashMap::new();
        let mut all = Vec::new();
        for kv in self.store().tree(T::Snapshots).iter() {
            let (k, v) = kv?;
            let Some(key) = StepKey::from_key(&k) else { continue };
            let rec: SnapshotRecord = decode(T::Snapshots, &v)?;
            runs_of.entry(rec.pipeline.clone()).or_default().insert(key.job.run.0);
            all.push((key, rec.created_ms, rec.pipeline));
        }
        let kept = |pipeline: &str, run: u64| {
            runs_of.get(pipeline).is_some_and(|runs| runs.iter().rev().take(keep_runs).any(|r| *r == run))
        };
        let doomed: Vec<StepKey> = all
            .into_iter()
            .filter(|(key, created, pipeline)| *created < older_than_ms || !kept(pipeline, key.job.run.0))
            .map(|(key, ..)| key)
            .collect();
        // Index entries of snapshots that go, or went with their runs.
        let gone: std::collections::HashSet<[u8; 20]> = doomed.iter().map(|k| k.key()).collect();
        let mut stale = Vec::new();
        for kv in self.store().tree(T::ReuseIndex).iter() {
            let (k, v) = kv?;
            let live = match StepKey::from_key(&v) {
                Some(t) => !gone.contains(&t.key()) && self.store().tree(T::Snapshots).contains_key(t.key())?,
                None => false,
            };
            if !live {
                stale.push(k.to_vec());
            }
        }
        for chunk in stale.chunks(200) {
            self.transition(|t| {
                for k in chunk {
                    // Rewritten since the scan by a newer snapshot: kept.
                    let now = t.store().tree(T::ReuseIndex).get(k)?.and_then(|v| StepKey::from_key(&v));
                    let live = match now {
                        Some(s) => !gone.contains(&s.key()) && t.store().tree(T::Snapshots).contains_key(s.key())?,
                        None => false,
                    };
                    if !live {
                        t.writes().delete(T::ReuseIndex, k);
                    }
                }
                Ok(())
            })?;
        }
        for chunk in doomed.chunks(200) {
            self.transition(|t| {
                for key in chunk {
                    t.writes().delete(T::Snapshots, key.key());
                    // The step may be gone with its run.
                    if let Ok(step) = t.step(*key) {
                        step.snapshot = false;
                    }
                }
                Ok(())
            })?;
        }
        Ok(doomed.len())
    }
}

/// Where a snapshot after step `step` of `job` is found by later runs
/// under `key` — runs of the same repository, ref, pipeline and job: `None`
/// when the step has no `reuse:`.
fn reuse_index_key(job: &JobRecord, step: u32, key: &str) -> Result<Option<Vec<u8>>> {
    let plan = job.steps.iter().find(|s| s.index == step);
    if plan.is_none_or(|s| s.reuse.is_none()) {
        return Ok(None);
    }
    // The ref too: a run finds only snapshots of runs of the same branch,
    // tag or pull request (whose secrets it shares), never another's.
    let (repo, git_ref) = job.source.as_ref().map_or(("", ""), |s| (s.repo.as_str(), s.r#ref.as_str()));
    let mut k = Vec::with_capacity(repo.len() + git_ref.len() + job.pipeline.len() + job.key.len() + 72);
    for part in [repo, git_ref, &job.pipeline, &job.key] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(&step.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    Ok(Some(k))
}

impl Tx<'_> {
    /// The one job of run `id` that did not succeed (a resume from a step
    /// that names no job).
    pub(crate) fn only_failed_job(&mut self, id: crate::store::keys::RunId) -> Result<JobKey> {
        let count = self.run(id)?.job_count;
        let mut failed = Vec::new();
        for i in 1..=count {
            let key = JobKey::new(id, i);
            if self.job_ref(key)?.status() != Status::Success {
                failed.push(key);
            }
        }
        match failed.as_slice() {
            [one] => Ok(*one),
            _ => Err(Error::invalid(format!(
                "{} jobs of run {id} did not succeed: say which one resumes from that step (`--job`)",
                failed.len()
            ))),
        }
    }

    /// The job of run `id` that `what` names: its id (`42.1`), key or name.
    pub(crate) fn job_named(&mut self, id: crate::store::keys::RunId, what: &str) -> Result<JobKey> {
        if let Ok(key) = JobKey::parse(what)
            && key.run == id
        {
            if self.job_ref(key)?.status() == Status::Success {
                return Err(Error::precondition(format!("job {key} succeeded: there is nothing to resume")));
            }
            return Ok(key);
        }
        let count = self.run(id)?.job_count;
        let mut found = Vec::new();
        for i in 1..=count {
            let key = JobKey::new(id, i);
            let job = self.job(key)?;
            if job.name == what || job.key == what {
                found.push(key);
            }
        }
        match found.as_slice() {
            [one] => {
                if self.job_ref(*one)?.status() == Status::Success {
                    return Err(Error::precondition(format!("job `{what}` succeeded: there is nothing to resume")));
                }
                Ok(*one)
            }
            [] => Err(Error::not_found(format!("run {id} has no job `{what}` (give its id, key or name)"))),
            _ => Err(Error::invalid(format!(
                "`{what}` names {} jobs of run {id} (a matrix job): give one's id or full name",
                found.len()
            ))),
        }
    }

    /// Where job `key`'s next attempt resumes: from `from.step` (or its
    /// first step that did not succeed), after the newest snapshot of an
    /// earlier step. `None`: from the first step (nothing to restore).
    pub(crate) fn resume_point(&mut self, key: JobKey, from_step: u32) -> Result<Option<ResumeRecord>> {
        let (attempt, n, name) = {
            let job = self.job(key)?;
            (job.attempt, job.steps.len() as u32, job.name.clone())
        };
        // Steps an earlier run's snapshot stood for (`reuse:`) are done.
        let reused_upto = StepKey::from_key(&self.job_ref(key)?.reused_from).map_or(0, |k| k.index);
        let start = if from_step > 0 {
            if from_step > n {
                return Err(Error::invalid(format!("job `{name}` has {n} steps: there is no step {from_step}")));
            }
            from_step
        } else {
            let mut first = None;
            for i in 1..=n {
                let step = self.step(key.step(attempt, i))?;
                if step.status() != Status::Success && step.restored_from == 0 && i > reused_upto {
                    first = Some(i);
                    break;
                }
            }
            match first {
                Some(i) => i,
                None => return Ok(None),
            }
        };
        if start <= 1 {
            return Ok(None);
        }
        let best = of_job(self.store(), key)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.index < start)
            .max_by_key(|k| (k.index, k.attempt));
        // The earlier run's snapshot the last attempt started from, when
        // none of the job's own is later (attempt 0 stands for it).
        let reused = StepKey::from_key(&self.job_ref(key)?.reused_from)
            .filter(|r| r.index < start && best.is_none_or(|b| b.index < r.index))
            .filter(|r| self.store().tree(T::Snapshots).contains_key(r.key()).unwrap_or(false));
        match (reused, best) {
            (Some(r), _) => Ok(Some(ResumeRecord { after_step: r.index, from_attempt: 0 })),
            (None, Some(k)) => Ok(Some(ResumeRecord { after_step: k.index, from_attempt: k.attempt })),
            (None, None) => Err(Error::precondition(if self.job_ref(key)?.snapshots {
                format!(
                    "job `{name}` has no snapshot to resume step {start} from: none was kept after an earlier step \
                     (expired, or a step's workspace or outputs held a secret value — its log says so); retry the \
                     whole job instead"
                )
            } else {
                format!(
                    "job `{name}` keeps no snapshots, so it cannot resume from step {start}: set `snapshots: true` on \
                     the job or pipeline (or start the server with --snapshots); retry the whole job instead"
                )
            })),
        }
    }

    /// Makes the new attempt of job `key` resume from `resume`: the steps
    /// up to the snapshot's are final, restored, with the outputs they had.
    /// `from_attempt` 0: from the earlier run's snapshot `reused` (the one
    /// the last attempt started from).
    pub(crate) fn resume_attempt(&mut self, key: JobKey, resume: ResumeRecord, reused: Vec<u8>) -> Result<()> {
        let attempt = self.job_ref(key)?.attempt;
        let source = if resume.from_attempt == 0 { attempt - 1 } else { resume.from_attempt };
        for i in 1..=resume.after_step {
            let (outputs, summary) = {
                // The attempt that took the snapshot ran it (or restored it,
                // with its outputs; or had it from the earlier run).
                let before = self.step(key.step(source, i))?;
                (before.outputs.clone(), before.summary.clone())
            };
            let step = self.step(key.step(attempt, i))?;
            step.status = Status::Skipped as i32;
            step.restored_from = source;
            step.outputs = outputs;
            step.summary = summary;
            step.message = format!("restored from the snapshot of attempt {}", resume.from_attempt);
        }
        tracing::info!(job = %key, attempt, after_step = resume.after_step, from = resume.from_attempt, "resuming job");
        let job = self.job(key)?;
        if resume.from_attempt == 0 {
            job.reused_from = reused;
        }
        job.resume = Some(resume);
        Ok(())
    }
}
