//! Removing finished runs that no retention rule keeps, and old events.
//!
//! The rules (see `RetentionPolicy` in the API): a run stays while it is
//! unfinished, among the newest `keep_last` runs of its pipeline, the
//! newest successful run of its branch (`keep_last_success`), or younger
//! than `keep_for` by when it finished. Which policy applies to a run is
//! the caller's business (`crate::retention` merges the server's, the
//! repository's and the stored pipeline's); this module only walks runs
//! and removes what no rule keeps.
//!
//! A pass walks every run newest first, a page at a time, without the
//! engine lock, counting per pipeline and per branch as it goes — so one
//! pass decides every rule exactly, in one read of the runs tree. It then
//! removes the runs it chose in transitions of at most [`BATCH_RUNS`] runs
//! (and [`BATCH_KEYS`] keys), each checking again under the lock that the
//! run is still finished (a retry may have reopened it), and lets other
//! transitions in between: dispatch waits for at most one small batch.
//!
//! A run goes with its jobs, steps, log chunks, packed log records,
//! artifact records and index entries; the blobs those records named are
//! deleted by the depot's next sweep (nothing names them any more). A run
//! whose logs are not packed yet is kept until they are (packing and
//! removing never race). Events are a replay log for followers: batches
//! older than a cutoff go, oldest first, always keeping the newest batch
//! (its cursor is where the next event continues).

use std::collections::{HashMap, HashSet};

use viaduct_proto::v1::Status;

use super::Engine;
use crate::{
    error::Result,
    store::{
        Store, T, WriteSet, decode,
        keys::RunId,
        records::{EventBatch, RunHead, RunRecord},
    },
};

/// Runs removed per transition.
pub const BATCH_RUNS: usize = 32;
/// Keys deleted per transition (a run with many unpacked chunks ends its
/// batch early).
pub const BATCH_KEYS: usize = 20_000;
/// The longest pause between two removal batches.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// Runs read per page while walking.
const PAGE: usize = 1000;
/// Removed run ids listed in a report.
const LISTED: usize = 1000;
/// Event batches deleted per commit.
const EVENT_BATCH: usize = 512;

/// The retention rules for one run, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Age (ms since it finished) after which it may go; 0 keeps it forever.
    pub keep_for_ms: i64,
    /// Keep the newest this many runs of its pipeline.
    pub keep_last: u32,
    /// Keep the newest successful run of its branch.
    pub keep_last_success: bool,
}

/// Why a run is kept, or that it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not finished (or its logs not packed yet).
    Unfinished,
    /// Its rules keep runs forever.
    Forever,
    /// Among the newest `keep_last` of its pipeline.
    Last,
    /// The newest successful run of its branch.
    LastSuccess,
    /// Younger than `keep_for`.
    Recent,
    /// No rule keeps it.
    Remove,
}

/// What a pass did (or, dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Runs looked at.
    pub examined: u64,
    /// Runs kept, by the first rule that keeps them.
    pub kept: HashMap<&'static str, u64>,
    /// Runs removed (dry run: that would be).
    pub removed: u64,
    /// The first [`LISTED`] of them, oldest first.
    pub removed_ids: Vec<RunId>,
    /// Records removed (runs, jobs, steps, logs, artifacts, index entries).
    pub records: u64,
    /// Their stored bytes (keys and values).
    pub bytes: u64,
    /// Event batches removed.
    pub event_batches: u64,
}

impl Verdict {
    /// The word a report counts it under.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Unfinished => "unfinished",
            Verdict::Forever => "forever",
            Verdict::Last => "last",
            Verdict::LastSuccess => "last_success",
            Verdict::Recent => "recent",
            Verdict::Remove => "remove",
        }
    }
}

/// Whether a run's status is final.
pub fn ended(status: Status) -> bool {
    matches!(
        status,
        Status::Success | Status::Failure | Status::Cancelled | Status::TimedOut | Status::Skipped | Status::RunnerLost
    )
}

/// Decides runs seen newest first: the counts that "newest N of its
/// pipeline" and "newest success of its branch" need.
#[derive(Default)]
pub struct Walk {
    seen: HashMap<String, u32>,
    green: HashSet<String>,
}

impl Walk {
    /// The group `run` counts in for "the newest N": its repository, where
    /// its definition came from (a stored pipeline, or a file's `name:`),
    /// and whether it is a pull request's — so pull requests cannot push a
    /// branch's runs out, nor a submitted file a stored pipeline's.
    fn group(run: &RunHead) -> String {
        let pr = run.source.as_ref().is_some_and(|s| s.event == "pull_request");
        let (kind, name) =
            if run.pipeline_ref.is_empty() { ("file", &run.pipeline) } else { ("stored", &run.pipeline_ref) };
        format!("{}\0{kind}\0{name}\0{}", run.repo(), if pr { "pr" } else { "" })
    }

    /// The branch `run` is the last success of: a pull request's is
    /// `pr/<number>` (a fork's branch named `main` is not `main`).
    fn branch(run: &RunHead) -> String {
        match &run.source {
            Some(s) if s.event == "pull_request" => format!("pr/{}", s.pull_request),
            Some(s) => s.branch.clone(),
            None => String::new(),
        }
    }

    /// The verdict on `run` (the next older one), under `rules`, at `now_ms`.
    pub fn judge(&mut self, run: &RunHead, rules: Rules, now_ms: i64) -> Verdict {
        let group = Self::group(run);
        let newer = self.seen.entry(group.clone()).or_insert(0);
        let rank = *newer;
        *newer += 1;
        let first_green =
            run.status() == Status::Success && self.green.insert(format!("{group}\0{}", Self::branch(run)));
        if !ended(run.status()) {
            Verdict::Unfinished
        } else if rules.keep_for_ms <= 0 {
            Verdict::Forever
        } else if rank < rules.keep_last {
            Verdict::Last
        } else if rules.keep_last_success && first_green {
            Verdict::LastSuccess
        } else if now_ms - ended_ms(run) < rules.keep_for_ms {
            Verdict::Recent
        } else {
            Verdict::Remove
        }
    }
}

/// When a run ended (its creation when it never recorded an end).
fn ended_ms(run: &RunHead) -> i64 {
    if run.finished_ms > 0 { run.finished_ms } else { run.created_ms }
}

/// A stored key to delete: its tree, the key, and its stored size (key and
/// value).
type Key = (T, Vec<u8>, usize);

/// The keys of `tree` under `prefix`, with their sizes.
fn keys_under(store: &Store, tree: T, prefix: &[u8], out: &mut Vec<Key>) -> Result<()> {
    for kv in store.tree(tree).scan_prefix(prefix) {
        let (k, v) = kv?;
        let size = k.len() + v.len();
        out.push((tree, k.to_vec(), size));
    }
    Ok(())
}

/// A run the walk chose to remove, with what it saw of it: removed only
/// if that has not changed since.
#[derive(Debug, Clone, Copy)]
struct Doomed {
    id: RunId,
    status: i32,
    finished_ms: i64,
}

/// What one removal transition did.
#[derive(Default)]
struct Removal {
    /// Runs removed (dry run: that would be).
    removed: Vec<RunId>,
    /// How many of the ids it went through.
    considered: usize,
    /// Runs kept after all: no longer finished.
    reopened: u64,
    records: u64,
    bytes: u64,
}

/// Trees whose keys start with the run's key.
const RUN_TREES: [T; 7] = [T::Jobs, T::Steps, T::Logs, T::PackedLogs, T::Artifacts, T::Unpacked, T::Snapshots];

impl Engine {
    /// One retention pass over runs: walks them newest first, judges each
    /// with `rules_of`, and (unless `dry_run`) removes those no rule keeps;
    /// then removes event batches older than `events_older_than_ms` (0:
    /// none).
    /// Blocking; run it on a blocking thread.
    pub fn prune(
        &self,
        rules_of: &dyn Fn(&RunHead) -> Rules,
        events_older_than_ms: i64,
        dry_run: bool,
    ) -> Result<PruneStats> {
        let store = self.store();
        let now = self.sh.now_ms();
        let mut stats = PruneStats::default();
        let mut walk = Walk::default();
        let mut doomed: Vec<Doomed> = Vec::new();
        let mut upper: Option<RunId> = None;
        loop {
            let page: Vec<(RunId, Option<RunHead>)> = {
                let range = match upper {
                    Some(id) => store.tree(T::Runs).range(..id.key()),
                    None => store.tree(T::Runs).iter(),
                };
                let mut page = Vec::with_capacity(PAGE);
                for kv in range.rev().take(PAGE) {
                    let (k, v) = kv?;
                    let Some(id) = RunId::from_key(&k) else { continue };
                    page.push((id, decode::<RunHead>(T::Runs, &v).ok()));
                }
                page
            };
            let Some((last, _)) = page.last() else { break };
            upper = Some(*last);
            for (id, run) in &page {
                stats.examined += 1;
                let Some(run) = run else {
                    // A record that does not decode is kept (and said),
                    // never a reason to stop retention.
                    tracing::warn!(run = %id, "retention: cannot decode the run record: kept");
                    *stats.kept.entry(Verdict::Unfinished.word()).or_default() += 1;
                    continue;
                };
                let mut verdict = walk.judge(run, rules_of(run), now);
                if verdict == Verdict::Remove && !self.sh.cfg.discard_unpacked && has_unpacked(store, *id)? {
                    verdict = Verdict::Unfinished;
                }
                if verdict == Verdict::Remove {
                    doomed.push(Doomed { id: *id, status: run.status, finished_ms: run.finished_ms });
                } else {
                    *stats.kept.entry(verdict.word()).or_default() += 1;
                }
            }
        }
        doomed.reverse();
        let mut rest = &doomed[..];
        while !rest.is_empty() {
            let batch = &rest[..rest.len().min(BATCH_RUNS)];
            let started = std::time::Instant::now();
            let removal = self.remove_runs(batch, dry_run)?;
            stats.records += removal.records;
            stats.bytes += removal.bytes;
            for id in removal.removed {
                stats.removed += 1;
                if stats.removed_ids.len() < LISTED {
                    stats.removed_ids.push(id);
                }
            }
            *stats.kept.entry(Verdict::Unfinished.word()).or_default() += removal.reopened;
            rest = &rest[removal.considered..];
            // Pace: at most half the time removing, so dispatch and reports
            // keep their usual latency while a large backlog is pruned.
            if !dry_run {
                std::thread::sleep(started.elapsed().min(MAX_PAUSE));
            }
        }
        if events_older_than_ms > 0 {
            stats.event_batches = self.prune_events(now.saturating_sub(events_older_than_ms), dry_run)?;
        }
        Ok(stats)
    }

    /// Removes runs of `ids` (in order) in one transition, stopping early
    /// past [`BATCH_KEYS`] keys; keeps a run no longer finished. The keys
    /// are gathered before the lock (a finished run's keys do not change:
    /// nothing writes to it unless it is retried, which the check under the
    /// lock sees); under it, each run is only checked again and deleted.
    fn remove_runs(&self, doomed: &[Doomed], dry_run: bool) -> Result<Removal> {
        let store = self.store();
        let mut gathered: Vec<(&Doomed, Vec<Key>)> = Vec::new();
        let mut total = 0;
        for d in doomed {
            let id = &d.id;
            if !gathered.is_empty() && total >= BATCH_KEYS {
                break;
            }
            let mut keys = Vec::new();
            keys_under(store, T::Runs, &id.key(), &mut keys)?;
            for tree in RUN_TREES {
                keys_under(store, tree, &id.key(), &mut keys)?;
            }
            total += keys.len();
            gathered.push((d, keys));
        }
        let (removal, ticket) = self.transition(|tx| {
            let mut out = Removal { considered: gathered.len(), ..Removal::default() };
            for (d, keys) in &gathered {
                let (id, store) = (&d.id, tx.store());
                let Some(run) = store.get::<RunRecord>(T::Runs, id.key())? else { continue };
                let unpacked = !tx.sh.cfg.discard_unpacked && has_unpacked(store, *id)?;
                if run.status != d.status || run.finished_ms != d.finished_ms || unpacked {
                    // Retried (and maybe ended again) since the walk: judged
                    // again by the next pass, with its new keys.
                    out.reopened += 1;
                    continue;
                }
                let entries = super::index::entries_of(*id, &run);
                out.records += (entries.len() + keys.len()) as u64;
                out.bytes += entries.iter().map(|k| k.len() as u64).sum::<u64>();
                out.bytes += keys.iter().map(|(_, _, size)| *size as u64).sum::<u64>();
                if !dry_run {
                    for key in entries {
                        tx.writes().delete(T::RunIndex, key);
                    }
                    for (tree, key, _) in keys {
                        tx.writes().delete(*tree, key);
                    }
                }
                out.removed.push(*id);
            }
            Ok(out)
        })?;
        // Let the fsync of this batch finish before the next: the removal
        // never builds a write backlog that others' commits would wait on.
        let (done, durable) = std::sync::mpsc::channel();
        store.after_durable(ticket, move || {
            let _ = done.send(());
        });
        let _ = durable.recv();
        Ok(removal)
    }

    /// Removes event batches whose newest event is older than `before_ms`,
    /// oldest first, never the newest batch. Returns how many.
    pub fn prune_events(&self, before_ms: i64, dry_run: bool) -> Result<u64> {
        let store = self.store();
        let newest = store.tree(T::Events).last()?.map(|(k, _)| k.to_vec());
        let (mut removed, mut pending) = (0u64, 0usize);
        let mut ws = WriteSet::default();
        for kv in store.tree(T::Events).iter() {
            let (k, v) = kv?;
            if newest.as_deref() == Some(&k[..]) {
                break;
            }
            let batch: EventBatch = decode(T::Events, &v)?;
            let at = batch.events.last().and_then(|e| e.time).map_or(0, |t| t.seconds * 1000);
            if at >= before_ms {
                break;
            }
            removed += 1;
            ws.delete(T::Events, k);
            pending += 1;
            if pending == EVENT_BATCH {
                if !dry_run {
                    store.commit(&ws)?;
                }
                ws = WriteSet::default();
                pending = 0;
            }
        }
        if !dry_run && !ws.is_empty() {
            store.commit(&ws)?;
        }
        Ok(removed)
    }
}

/// Whether a run has an ended attempt whose logs are not packed yet.
fn has_unpacked(store: &Store, id: RunId) -> Result<bool> {
    Ok(store.tree(T::Unpacked).scan_prefix(id.key()).next().transpose()?.is_some())
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::RunSource;

    use super::*;

    fn run(event: &str, branch: &str, pr: u32, status: Status, pipeline_ref: &str) -> RunHead {
        RunHead {
            pipeline: "ci".into(),
            status: status as i32,
            source: Some(RunSource {
                event: event.into(),
                repo: "app".into(),
                branch: branch.into(),
                pull_request: pr,
                ..Default::default()
            }),
            created_ms: 1,
            finished_ms: 1,
            pipeline_ref: pipeline_ref.into(),
            job_count: 1,
            error: String::new(),
        }
    }

    #[test]
    fn pull_requests_and_stored_pipelines_count_apart() {
        let rules = Rules { keep_for_ms: 1, keep_last: 1, keep_last_success: true };
        let mut walk = Walk::default();
        // Newest first: a fork's pull request from its own `main` succeeds,
        // then (older) the real main's last success and an older push.
        let fork = run("pull_request", "main", 7, Status::Success, "");
        let main = run("push", "main", 0, Status::Success, "");
        let older = run("push", "main", 0, Status::Failure, "");
        assert_eq!(walk.judge(&fork, rules, 10), Verdict::Last, "the newest pull request run of its group");
        assert_eq!(walk.judge(&main, rules, 10), Verdict::Last, "pull requests do not push main's runs out");
        assert_eq!(walk.judge(&older, rules, 10), Verdict::Remove);
        let main_again = run("push", "main", 0, Status::Success, "");
        assert_eq!(walk.judge(&main_again, rules, 10), Verdict::Remove, "only the newest success of main is kept");
        // A stored pipeline named like a file's `name:` is its own group.
        let stored = run("manual", "", 0, Status::Failure, "ci");
        assert_eq!(walk.judge(&stored, rules, 10), Verdict::Last);
    }
}
