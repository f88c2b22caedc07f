//! Cron schedules (`on.schedule`, 5 fields, UTC).
//!
//! Sources of schedules: the pipeline file at the tip of each repository's
//! default branch, and stored pipelines. The scheduler sleeps until the
//! next slot of any schedule.
//!
//! # The firing rule (restarts and downtime)
//! For each schedule the server stores the last slot it acted on, in the
//! same transaction as the run that slot started. When it looks (at each
//! slot, and at start):
//! - if the latest slot at or before now is newer than the stored one and
//!   at most `--schedule-catch-up` old (default 1 h), it fires **once** for
//!   that slot; slots missed before it (a long downtime) are skipped, so a
//!   restart never fires a burst;
//! - if it is older than that, the slot is recorded without a run;
//! - a schedule seen for the first time starts from now (no past slots).
//!
//! So a slot that fell during a short downtime still runs when the server
//! comes back, and no slot ever runs twice.
//!
//! Tests use a virtual clock (`--test-clock EPOCH:SPEED`): time runs SPEED
//! times faster than real time from EPOCH (unix seconds), across restarts.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use viaduct_pipeline::cron::CronSchedule;

use super::Triggers;
use crate::repos::blocking;
use crate::{
    error::{Error, Result},
    git::{self, PIPELINE_PATH},
    launch::{self, Launch, OnInvalid, Origin},
    launch::{Cause, resolve},
    store::{T, WriteSet, decode, keys::RunId, records::PipelineRecord},
};

/// The time schedules run on.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: f64,
    speed: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Self { epoch: 0.0, speed: 1.0 }
    }
}

impl Clock {
    /// A clock running `speed` times faster than real time from `epoch`
    /// (unix seconds); `speed` 1 is real time.
    pub fn new(epoch: f64, speed: f64) -> Self {
        Self { epoch, speed: speed.max(f64::MIN_POSITIVE) }
    }

    /// Parses `EPOCH:SPEED`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (e, sp) = s.split_once(':').ok_or("expected EPOCH:SPEED, e.g. 1767225600:600")?;
        Ok(Self::new(e.parse().map_err(|_| "bad EPOCH")?, sp.parse().map_err(|_| "bad SPEED")?))
    }

    fn real_now() -> f64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }

    /// Now, on this clock.
    pub fn now(&self) -> DateTime<Utc> {
        let t = self.epoch + (Self::real_now() - self.epoch) * self.speed;
        DateTime::from_timestamp_millis((t * 1000.0) as i64).unwrap_or_default()
    }

    /// How long to really sleep for `d` of this clock's time.
    fn real(&self, d: chrono::Duration) -> Duration {
        Duration::from_secs_f64((d.num_milliseconds().max(0) as f64 / 1000.0) / self.speed)
    }
}

/// What to do about one schedule now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing: no new slot.
    Nothing,
    /// Fire once for this slot (unix seconds).
    Fire(i64),
    /// Record this slot without a run (too old to catch up).
    Skip(i64),
}

/// The firing rule (see the module docs) for a schedule last acted on at
/// slot `last` (unix seconds), at time `now`.
pub fn due(cron: &CronSchedule, last: i64, now: DateTime<Utc>, catch_up: Duration) -> Due {
    let Some(slot) = cron.latest_at_or_before(&now) else { return Due::Nothing };
    let slot_s = slot.timestamp();
    if slot_s <= last {
        return Due::Nothing;
    }
    let age = now.timestamp() - slot_s;
    if age <= i64::try_from(catch_up.as_secs()).unwrap_or(i64::MAX) { Due::Fire(slot_s) } else { Due::Skip(slot_s) }
}

/// The schedules of every source, and a wake-up when they change.
pub struct Schedules {
    entries: Mutex<BTreeMap<String, Vec<CronSchedule>>>,
    changed: Notify,
    clock: Clock,
    catch_up: Duration,
}

/// The source key of a repository's schedules.
pub fn repo_source(name: &str) -> String {
    format!("repo:{name}")
}

/// The source key of a stored pipeline's schedules.
pub fn pipeline_source(name: &str) -> String {
    format!("pipeline:{name}")
}

fn state_key(source: &str, cron: &CronSchedule) -> Vec<u8> {
    format!("{source}\0{}", cron.as_str()).into_bytes()
}

impl Schedules {
    /// No schedules yet.
    pub fn new(clock: Clock, catch_up: Duration) -> Self {
        Self { entries: Mutex::default(), changed: Notify::new(), clock, catch_up }
    }

    /// Replaces the schedules of `source`.
    pub fn set(&self, source: &str, crons: Vec<CronSchedule>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if crons.is_empty() {
            e.remove(source);
        } else {
            e.insert(source.to_string(), crons);
        }
        drop(e);
        self.changed.notify_one();
    }

    fn snapshot(&self) -> Vec<(String, CronSchedule)> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().flat_map(|(s, cs)| cs.iter().map(move |c| (s.clone(), c.clone()))).collect()
    }
}

fn crons_of(pipeline: &viaduct_pipeline::spec::Pipeline) -> Vec<CronSchedule> {
    pipeline.triggers.schedules().iter().map(|c| c.schedule.clone()).collect()
}

impl Triggers {
    /// Re-reads the schedules of repository `name` from its default branch
    /// tip `tip`.
    pub(super) async fn refresh_schedules(
        &self,
        name: &str,
        _rec: &crate::store::records::RepoRecord,
        tip: Option<String>,
    ) {
        let crons = match tip {
            None => Vec::new(),
            Some(sha) => {
                let path = self.repos.path(name);
                match blocking(move || git::read_file(&path, &sha, PIPELINE_PATH, launch::MAX_PIPELINE_BYTES)).await {
                    Ok(Some(git::FileText::Whole(yaml))) => {
                        resolve::parse(PIPELINE_PATH, &yaml).map(|p| crons_of(&p)).unwrap_or_default()
                    }
                    _ => Vec::new(),
                }
            }
        };
        if !crons.is_empty() {
            tracing::info!(repo = name, schedules = crons.len(), "schedules loaded");
        }
        self.schedules.set(&repo_source(name), crons);
    }

    /// Re-reads the schedules of stored pipeline `name` (`None`: deleted).
    pub fn refresh_pipeline_schedules(&self, name: &str, yaml: Option<&str>) {
        let crons =
            yaml.and_then(|y| resolve::parse(&format!("{name}.yml"), y).ok()).map(|p| crons_of(&p)).unwrap_or_default();
        self.schedules.set(&pipeline_source(name), crons);
    }

    pub(super) fn load_pipeline_schedules(&self) {
        for kv in self.store.tree(T::Pipelines).iter() {
            let Ok((k, v)) = kv else { continue };
            let Ok(rec) = decode::<PipelineRecord>(T::Pipelines, &v) else { continue };
            self.refresh_pipeline_schedules(&String::from_utf8_lossy(&k), Some(&rec.yaml));
        }
    }

    /// Applies the firing rule to every schedule once; returns when the
    /// next slot of any schedule is.
    async fn tick(&self) -> Option<DateTime<Utc>> {
        let now = self.schedules.clock.now();
        let mut next: Option<DateTime<Utc>> = None;
        for (source, cron) in self.schedules.snapshot() {
            if let Some(n) = cron.next_after(&now) {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
            let key = state_key(&source, &cron);
            let store = &self.store;
            let last = match store.tree(T::ScheduleState).get(&key) {
                Ok(Some(v)) => i64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
                Ok(None) => {
                    // First seen: start from now, no past slots.
                    let mut ws = WriteSet::default();
                    ws.put_raw(T::ScheduleState, &key, now.timestamp().to_be_bytes().to_vec());
                    if let Err(e) = store.commit_durable(&ws).await {
                        tracing::error!(error = %e, "cannot record a schedule");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read schedule state");
                    continue;
                }
            };
            let mut ws = WriteSet::default();
            match due(&cron, last, now, self.schedules.catch_up) {
                Due::Nothing => continue,
                Due::Skip(slot) => {
                    tracing::warn!(%source, cron = %cron, slot, "schedule slot too old to catch up: skipped");
                    ws.put_raw(T::ScheduleState, &key, slot.to_be_bytes().to_vec());
                    if let Err(e) = store.commit_durable(&ws).await {
                        tracing::error!(error = %e, "cannot record a schedule slot");
                    }
                }
                Due::Fire(slot) => {
                    // The slot is recorded with the run (or alone): it fires once.
                    ws.put_raw(T::ScheduleState, &key, slot.to_be_bytes().to_vec());
                    match self.fire(&source, &cron, slot, ws).await {
                        Ok(Some(id)) => tracing::info!(%source, cron = %cron, slot, run = %id, "schedule fired"),
                        Ok(None) => {}
                        // No room: the slot is not spent; it fires once
                        // space returns (within the catch-up window).
                        Err(e @ crate::error::Error::NoRoom(_)) => {
                            tracing::warn!(%source, error = %e, "scheduled run waits for disk space");
                        }
                        Err(e) => {
                            tracing::warn!(%source, error = %e, "scheduled run not started");
                            let mut ws = WriteSet::default();
                            ws.put_raw(T::ScheduleState, &key, slot.to_be_bytes().to_vec());
                            let _ = store.commit_durable(&ws).await;
                        }
                    }
                }
            }
        }
        next
    }

    /// Starts the run a schedule of `source` asks for at `slot` (unix
    /// seconds), committing `extra` with it.
    async fn fire(&self, source: &str, cron: &CronSchedule, slot: i64, extra: WriteSet) -> Result<Option<RunId>> {
        let schedule = Some((cron.as_str().to_string(), slot));
        if let Some(repo) = source.strip_prefix("repo:") {
            let rec = self.repos.get(repo)?;
            let (path, branch) = (self.repos.path(repo), rec.default_branch.clone());
            let commit = blocking(move || git::resolve(&path, &branch)).await?;
            let event = super::RepoEvent {
                event: "schedule",
                git_ref: format!("refs/heads/{}", rec.default_branch),
                commit,
                base_branch: String::new(),
                pull_request: 0,
                inputs: Default::default(),
                priority: None,
                schedule,
                pull: None,
                sender: String::new(),
            };
            return self.launch(repo, &rec, event, extra).await;
        }
        let name =
            source.strip_prefix("pipeline:").ok_or_else(|| Error::Internal(format!("bad schedule source {source}")))?;
        let rec = crate::pipelines::load(&self.store, name)?;
        let cause = Cause {
            source: viaduct_proto::v1::RunSource {
                event: "schedule".into(),
                schedule: cron.as_str().to_string(),
                scheduled_for: crate::convert::timestamp(slot * 1000),
                ..Default::default()
            },
            pipeline_ref: name.to_string(),
            ..Default::default()
        };
        // Nobody waits on a schedule: an invalid stored pipeline leaves a
        // failed run, as a repository's does.
        let launch = Launch {
            on_invalid: OnInvalid::FailedRun,
            ..Launch::new(Origin::File { name: format!("{name}.yml"), yaml: rec.yaml }, cause)
        };
        launch::start(&self.engine, &self.store, &self.plugins, launch, extra).await
    }
}

/// Starts the scheduler task.
pub fn spawn(triggers: Arc<Triggers>) {
    tokio::spawn(async move {
        loop {
            let next = triggers.tick().await;
            let clock = triggers.schedules.clock;
            let wait = next.map_or(Duration::from_secs(60), |n| clock.real(n - clock.now()) + Duration::from_millis(1));
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
                () = triggers.schedules.changed.notified() => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn fires_once_for_the_latest_slot_within_the_catch_up_window() {
        let every_10 = CronSchedule::parse("*/10 * * * *").unwrap();
        let hour = Duration::from_secs(3600);
        let last = at("2026-01-01T10:00:00Z").timestamp();
        // Nothing new yet.
        assert_eq!(due(&every_10, last, at("2026-01-01T10:09:59Z"), hour), Due::Nothing);
        // A slot fell during a short downtime: fire it once…
        let slot = at("2026-01-01T10:20:00Z").timestamp();
        assert_eq!(due(&every_10, last, at("2026-01-01T10:25:00Z"), hour), Due::Fire(slot));
        // …and once recorded, not again.
        assert_eq!(due(&every_10, slot, at("2026-01-01T10:25:00Z"), hour), Due::Nothing);
        // A long downtime: only the latest slot, and only if recent enough.
        assert_eq!(
            due(&every_10, last, at("2026-01-01T15:01:00Z"), hour),
            Due::Fire(at("2026-01-01T15:00:00Z").timestamp())
        );
        assert_eq!(
            due(&every_10, last, at("2026-01-01T15:05:00Z"), Duration::from_secs(60)),
            Due::Skip(at("2026-01-01T15:00:00Z").timestamp())
        );
    }

    #[test]
    fn the_test_clock_runs_faster() {
        let c = Clock::parse("1000:60").unwrap();
        assert!(c.now().timestamp() > 1_000_000);
        assert_eq!(c.real(chrono::Duration::seconds(60)), Duration::from_secs(1));
        assert!(Clock::parse("x").is_err());
    }
}
