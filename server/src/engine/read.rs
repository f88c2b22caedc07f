//! Queries: what the API reads. Reads do not take the engine lock; each
//! record read is a consistent committed version.

use std::collections::HashMap;

use viaduct_proto::{
    StatusWord as _,
    v1::{self, RunEvent, Status},
};

use super::{
    Engine,
    index::{self, Field},
};
use crate::{
    convert,
    error::{Error, Result},
    store::{
        T, decode,
        keys::{JobKey, RunId, StepKey},
        logs::Chunk,
        records::{EventBatch, JobRecord, PackedLogRecord, RunRecord, StepRecord},
    },
};

/// A step's log as [`Engine::read_log`] finds it.
#[derive(Debug)]
pub struct LogRead {
    /// Where the bytes are.
    pub at: LogAt,
    /// The log's length (final once the step has finished).
    pub size: u64,
    /// The step has finished.
    pub finished: bool,
    /// The most bytes to read from where the read started (within `size`
    /// once the step has finished).
    pub limit: u64,
}

/// Where the bytes of a log read are.
#[derive(Debug)]
pub enum LogAt {
    /// Read from the store's chunks.
    Chunks(Vec<Chunk>),
    /// In a packed blob: read them there.
    Packed(PackedLogRecord),
}

/// Filters and paging of `Runs.List`.
#[derive(Debug, Default, Clone)]
pub struct RunQuery {
    /// Any of these states (empty = all).
    pub statuses: Vec<Status>,
    /// Pipeline name.
    pub pipeline: String,
    /// Repository id.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Page size (clamped to 1..=1000, default 50).
    pub page_size: u32,
    /// Continue after this token.
    pub page_token: String,
    /// Only runs of these repositories (`None`: all runs; `""` in the
    /// list: runs of no repository).
    pub visible: Option<Vec<String>>,
}

/// What a log follower follows.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// All steps of all jobs of a run.
    Run(RunId),
    /// All steps of a job.
    Job(JobKey),
    /// One step (1-based index) of a job's current attempt.
    Step(JobKey, u32),
}

impl Scope {
    /// The run the scope belongs to.
    pub fn run(self) -> RunId {
        match self {
            Self::Run(r) => r,
            Self::Job(j) | Self::Step(j, _) => j.run,
        }
    }
}

/// A step as a log follower sees it.
#[derive(Debug, Clone)]
pub struct StepView {
    /// Its key (with the attempt).
    pub key: StepKey,
    /// Its job's display name.
    pub job_name: String,
    /// Its display name.
    pub name: String,
    /// Current state.
    pub status: Status,
    /// Exit code once finished.
    pub exit_code: Option<i32>,
    /// Why it ended as it did (see `Step.message`).
    pub message: String,
    /// Bytes of log stored now.
    pub size: u64,
}

/// Most queued jobs of one run [`Engine::get_run`] says why they wait.
const MAX_EXPLAINED: usize = 100;

impl Engine {
    /// [`Engine::get_run`] for a client that may stop at the run's end
    /// (the CLI exits with its status): an ended run is given only once
    /// its end is durable, never an end that a crash could undo; a run
    /// still going is given at once. The end was written before the
    /// ticket is taken, so the ticket covers it; when it was flushed
    /// already, this costs no flush.
    pub async fn get_run_durable_end(&self, id: RunId) -> Result<v1::Run> {
        let run = self.get_run(id)?;
        if run.status().is_terminal() {
            self.store().wait_durable(self.store().ticket_covering()).await;
        }
        Ok(run)
    }

    /// A run with its jobs and their current attempt's steps; a queued
    /// job says why it waits (`Job.waiting`).
    pub fn get_run(&self, id: RunId) -> Result<v1::Run> {
        let rec: RunRecord =
            self.store().get(T::Runs, id.key())?.ok_or_else(|| Error::not_found(format!("run {id} not found")))?;
        let mut run = convert::run(id, &rec);
        let mut explained = 0;
        let mut fleet = HashMap::new();
        for i in 1..=rec.job_count {
            let key = JobKey::new(id, i);
            let job = self.job_record(key)?;
            let mut j = convert::job(key, &job);
            // Bounded: a run of thousands of queued jobs explains the first.
            if job.status() == Status::Queued && explained < MAX_EXPLAINED {
                explained += 1;
                let st = self.lock();
                if let Some(q) = st.queue.get(key) {
                    j.waiting = super::dispatch::waiting(&st, q, self.sh.now_ms(), &mut fleet);
                }
            }
            for (s, step) in self.steps_of(key, job.attempt, job.steps.len())? {
                let size = self.live_size(s, &step)?;
                j.steps.push(convert::step(s, &step, size));
            }
            run.jobs.push(j);
        }
        Ok(run)
    }

    /// Whether a run of `pipeline` of repository `repo` at `commit` exists
    /// (among the repository's newest 2,000 that retention kept).
    pub fn ran_at(&self, repo: &str, pipeline: &str, commit: &str) -> Result<bool> {
        for id in super::index::scan(self.store(), super::index::Field::Repo, repo.as_bytes(), None).take(2000) {
            let Some(head) = self.store().get::<crate::store::records::RunHead>(T::Runs, id?.key())? else { continue };
            if head.pipeline == pipeline && head.source.as_ref().is_some_and(|s| s.commit == commit) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `key` is waiting to run (pending its needs, or queued).
    pub fn job_waiting(&self, key: JobKey) -> Result<bool> {
        Ok(matches!(self.job_record(key)?.status(), Status::Pending | Status::Queued))
    }

    /// The repository a run belongs to (`""`: none — submitted or a stored
    /// pipeline's), for access checks.
    pub fn run_repo(&self, id: RunId) -> Result<String> {
        let rec: RunRecord =
            self.store().get(T::Runs, id.key())?.ok_or_else(|| Error::not_found(format!("run {id} not found")))?;
        Ok(rec.source.map(|s| s.repo).unwrap_or_default())
    }

    fn job_record(&self, key: JobKey) -> Result<JobRecord> {
        self.store().get(T::Jobs, key.key())?.ok_or_else(|| Error::not_found(format!("job {key} not found")))
    }

    fn steps_of(&self, job: JobKey, attempt: u32, n: usize) -> Result<Vec<(StepKey, StepRecord)>> {
        let mut out = Vec::with_capacity(n);
        for kv in self.store().tree(T::Steps).scan_prefix(StepKey::attempt_prefix(job, attempt)) {
            let (k, v) = kv?;
            if let Some(key) = StepKey::from_key(&k) {
                out.push((key, decode(T::Steps, &v)?));
            }
        }
        Ok(out)
    }

    fn live_size(&self, key: StepKey, step: &StepRecord) -> Result<u64> {
        if step.status().is_terminal() { Ok(step.log_size) } else { self.store().logs.len(key) }
    }

    /// Runs matching `q`, newest first (jobs without steps), and the token
    /// of the next page (empty at the end).
    pub fn list_runs(&self, q: &RunQuery) -> Result<(Vec<v1::Run>, String)> {
        let before = if q.page_token.is_empty() {
            None
        } else {
            Some(RunId::parse(&q.page_token).map_err(|_| Error::invalid("invalid page_token"))?)
        };
        let size = match q.page_size {
            0 => 50,
            n => n.min(1000),
        } as usize;
        let store = self.store();
        let ids: Box<dyn Iterator<Item = Result<RunId>>> = if !q.pipeline.is_empty() {
            Box::new(index::scan(store, Field::Pipeline, q.pipeline.as_bytes(), before))
        } else if !q.repo.is_empty() {
            Box::new(index::scan(store, Field::Repo, q.repo.as_bytes(), before))
        } else if !q.branch.is_empty() {
            Box::new(index::scan(store, Field::Branch, q.branch.as_bytes(), before))
        } else if !q.statuses.is_empty() {
            let scans = q
                .statuses
                .iter()
                .map(|s| {
                    Box::new(index::scan(store, Field::Status, &[*s as u8], before)) as Box<dyn Iterator<Item = _>>
                })
                .collect();
            Box::new(index::merge_desc(scans))
        } else {
            let hi = before.map_or([0xff; 8], RunId::key);
            Box::new(store.tree(T::Runs).range(..hi).rev().map(|kv| Ok(RunId::from_key(&kv?.0).unwrap_or(RunId(0)))))
        };
        let mut runs = Vec::with_capacity(size);
        let mut next = String::new();
        for id in ids {
            let id = id?;
            let Some(rec) = store.get::<RunRecord>(T::Runs, id.key())? else { continue };
            let src = rec.source.clone().unwrap_or_default();
            let keep = (q.statuses.is_empty() || q.statuses.contains(&rec.status()))
                && (q.pipeline.is_empty() || q.pipeline == rec.pipeline)
                && (q.repo.is_empty() || q.repo == src.repo)
                && (q.branch.is_empty() || q.branch == src.branch)
                && q.visible.as_ref().is_none_or(|v| v.contains(&src.repo));
            if !keep {
                continue;
            }
            if runs.len() == size {
                next = runs.last().map(|r: &v1::Run| r.id.clone()).unwrap_or_default();
                break;
            }
            let mut run = convert::run(id, &rec);
            for i in 1..=rec.job_count {
                let key = JobKey::new(id, i);
                run.jobs.push(convert::job(key, &self.job_record(key)?));
            }
            runs.push(run);
        }
        Ok((runs, next))
    }

    /// The steps a follower of `scope` sees now, in order, and whether the
    /// scope has finished (nothing in it will change again).
    pub fn scope_steps(&self, scope: Scope) -> Result<(Vec<StepView>, bool)> {
        let run: RunRecord = self
            .store()
            .get(T::Runs, scope.run().key())?
            .ok_or_else(|| Error::not_found(format!("run {} not found", scope.run())))?;
        let jobs: Vec<JobKey> = match scope {
            Scope::Run(id) => (1..=run.job_count).map(|i| JobKey::new(id, i)).collect(),
            Scope::Job(j) | Scope::Step(j, _) => vec![j],
        };
        let mut out = Vec::new();
        let mut done = run.status().is_terminal();
        for key in jobs {
            let job = self.job_record(key)?;
            if !matches!(scope, Scope::Run(_)) {
                done = job.status().is_terminal();
            }
            // Earlier attempts first: a follower sees a retried job's history.
            for attempt in 1..=job.attempt {
                for (sk, step) in self.steps_of(key, attempt, job.steps.len())? {
                    if let Scope::Step(_, idx) = scope {
                        if sk.index != idx || attempt != job.attempt {
                            continue;
                        }
                        done = step.status().is_terminal();
                    }
                    out.push(StepView {
                        key: sk,
                        job_name: job.name.clone(),
                        name: step.name.clone(),
                        status: step.status(),
                        exit_code: step.exit_code,
                        message: step.message.clone(),
                        size: self.live_size(sk, &step)?,
                    });
                }
            }
        }
        if out.is_empty() && matches!(scope, Scope::Step(..)) {
            return Err(Error::not_found("step not found"));
        }
        Ok((out, done))
    }

    /// Resolves a public step id and attempt (0 = current) to a step key.
    pub fn step_key(&self, step_id: &str, attempt: u32) -> Result<StepKey> {
        let (job, index) = StepKey::parse_public(step_id)?;
        let rec = self.job_record(job)?;
        let attempt = if attempt == 0 { rec.attempt } else { attempt };
        if attempt > rec.attempt || index as usize > rec.steps.len() {
            return Err(Error::not_found(format!("step {step_id} (attempt {attempt}) not found")));
        }
        Ok(job.step(attempt, index))
    }

    /// Up to `limit` bytes of a step's log from `offset` — or where they
    /// are, once the log is packed into a blob (`packed_logs` reads those) —
    /// with the stored size and whether the step has finished.
    pub fn read_log(&self, key: StepKey, offset: u64, limit: u64) -> Result<LogRead> {
        let step: StepRecord =
            self.store().get(T::Steps, key.key())?.ok_or_else(|| Error::not_found(format!("step {key} not found")))?;
        let size = self.live_size(key, &step)?;
        let finished = step.status().is_terminal();
        // A finished step's log ends at its recorded size (a chunk stored
        // as its attempt ended is not shown).
        let limit = if finished { limit.min(size.saturating_sub(offset)) } else { limit };
        let packed = || self.store().get::<PackedLogRecord>(T::PackedLogs, key.key());
        if let Some(p) = packed()? {
            return Ok(LogRead { at: LogAt::Packed(p), size, finished, limit });
        }
        let chunks = self.store().logs.read(key, offset, limit)?;
        // Packed (and its chunks removed) between the two reads.
        if chunks.is_empty()
            && offset < size
            && let Some(p) = packed()?
        {
            return Ok(LogRead { at: LogAt::Packed(p), size, finished, limit });
        }
        Ok(LogRead { at: LogAt::Chunks(chunks), size, finished, limit })
    }

    /// Stored events after `cursor` (only those of `run` when set): at most
    /// `limit` events, scanning at most `limit × 10` records. Returns them and
    /// the cursor of the last record scanned, where the next call resumes.
    pub fn events_after(&self, cursor: u64, run: Option<RunId>, limit: usize) -> Result<(Vec<RunEvent>, u64)> {
        let run = run.map(|r| r.to_string());
        let mut out = Vec::new();
        let mut last = cursor;
        let mut scanned = 0;
        let tree = self.store().tree(T::Events);
        // Start at the batch that holds cursor + 1.
        let start = match tree.range(..=(cursor + 1).to_be_bytes()).next_back() {
            Some(kv) => kv?.0.to_vec(),
            None => (cursor + 1).to_be_bytes().to_vec(),
        };
        'batches: for kv in tree.range(start..) {
            let (_, v) = kv?;
            for ev in decode::<EventBatch>(T::Events, &v)?.events {
                if ev.cursor <= cursor {
                    continue;
                }
                last = ev.cursor;
                scanned += 1;
                if run.as_ref().is_none_or(|r| *r == ev.run_id) {
                    out.push(ev);
                }
                if out.len() >= limit || scanned >= limit * 10 {
                    break 'batches;
                }
            }
        }
        Ok((out, last))
    }
}
