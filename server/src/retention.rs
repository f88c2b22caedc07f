//! Run retention: the server's defaults, each repository's and stored
//! pipeline's overrides, and the maintenance task that applies them.
//!
//! A run's rules are its stored pipeline's policy (runs triggered from
//! one), over its repository's, over the server's flags, field by field.
//! The pipeline file itself cannot set them: a pull request must not be
//! able to make its own runs vanish. Who may set them: a repository's
//! maintainers (`Repos.Update`), stored pipelines' maintainers
//! (`Pipelines.Create/Update`); who may run a pass by hand or see what it
//! would do: admins (`Admin.Prune`).
//!
//! The task runs every `--retention-every` on the leading server; a pass
//! takes the engine lock only for small batches (see
//! [`crate::engine::prune`]). One pass runs at a time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use viaduct_proto::v1::{PruneReport, RetentionPolicy};

use crate::{
    convert,
    engine::{
        Engine,
        prune::{PruneStats, Rules},
    },
    error::{Error, Result},
    store::{
        Store, T, decode,
        records::{PipelineRecord, RepoRecord, RunHead},
    },
};

/// The most runs a policy may ask to keep per pipeline.
pub const MAX_KEEP_LAST: u32 = 1_000_000;
/// The longest a policy may keep runs for (100 years; 0 is forever).
pub const MAX_KEEP_FOR_SECONDS: u64 = 100 * 366 * 24 * 3600;

/// The server's retention settings (flags).
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Age after which a finished run may go (`ZERO`: forever).
    pub keep_for: Duration,
    /// Keep the newest this many runs of each pipeline.
    pub keep_last: u32,
    /// Keep the newest successful run of each branch.
    pub keep_last_success: bool,
    /// The least a repository's or stored pipeline's policy may keep runs
    /// (`keep_for` below it counts as it): maintainers cannot erase their
    /// runs' history faster than admins allow.
    pub min_keep_for: Duration,
    /// Age after which events go (`ZERO`: forever).
    pub keep_events_for: Duration,
    /// Age after which a run still awaiting approval is cancelled
    /// (`ZERO`: never).
    pub approvals_expire_after: Duration,
    /// How often the maintenance task runs (`ZERO`: never by itself).
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep_for: Duration::from_secs(90 * 24 * 3600),
            keep_last: 50,
            keep_last_success: true,
            min_keep_for: Duration::ZERO,
            keep_events_for: Duration::from_secs(30 * 24 * 3600),
            approvals_expire_after: Duration::from_secs(30 * 24 * 3600),
            every: Duration::from_secs(600),
        }
    }
}

/// Refuses a policy out of bounds.
pub fn check(policy: &RetentionPolicy) -> Result<()> {
    if policy.keep_last.is_some_and(|n| n > MAX_KEEP_LAST) {
        return Err(Error::invalid(format!("retention: keep_last is at most {MAX_KEEP_LAST}")));
    }
    if policy.keep_for_seconds.is_some_and(|s| s > MAX_KEEP_FOR_SECONDS) {
        return Err(Error::invalid("retention: keep_for_seconds is at most 100 years (0 keeps runs forever)"));
    }
    Ok(())
}

/// A stored policy changed by `change`: the fields it sets replace the
/// stored ones, the others stay; an empty change forgets the policy (the
/// defaults apply).
pub fn merged(stored: Option<RetentionPolicy>, change: RetentionPolicy) -> Option<RetentionPolicy> {
    if change == RetentionPolicy::default() {
        return None;
    }
    let old = stored.unwrap_or_default();
    Some(RetentionPolicy {
        keep_for_seconds: change.keep_for_seconds.or(old.keep_for_seconds),
        keep_last: change.keep_last.or(old.keep_last),
        keep_last_success: change.keep_last_success.or(old.keep_last_success),
    })
}

/// `policy` over `base`, field by field.
fn over(base: Rules, policy: Option<&RetentionPolicy>) -> Rules {
    let Some(p) = policy else { return base };
    Rules {
        keep_for_ms: p
            .keep_for_seconds
            .map_or(base.keep_for_ms, |s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
        keep_last: p.keep_last.unwrap_or(base.keep_last),
        keep_last_success: p.keep_last_success.unwrap_or(base.keep_last_success),
    }
}

/// Applies retention.
pub struct Retention {
    engine: Arc<Engine>,
    store: Arc<Store>,
    cfg: RetentionConfig,
    /// One pass at a time.
    pass: Mutex<()>,
    /// The last pass that removed (not a dry run).
    last: Mutex<Option<PruneReport>>,
}

impl Retention {
    /// Retention over `engine`'s runs with the server's `cfg`.
    pub fn new(engine: Arc<Engine>, store: Arc<Store>, cfg: RetentionConfig) -> Arc<Self> {
        Arc::new(Self { engine, store, cfg, pass: Mutex::new(()), last: Mutex::new(None) })
    }

    /// The report of the last pass that removed, if any ran.
    pub fn last_report(&self) -> Option<PruneReport> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The server's rules.
    fn defaults(&self) -> Rules {
        Rules {
            keep_for_ms: i64::try_from(self.cfg.keep_for.as_millis()).unwrap_or(i64::MAX),
            keep_last: self.cfg.keep_last,
            keep_last_success: self.cfg.keep_last_success,
        }
    }

    /// Each run's rules, from the policies stored now.
    fn rules(&self) -> Result<impl Fn(&RunHead) -> Rules + use<>> {
        let defaults = self.defaults();
        let mut repos: HashMap<String, RetentionPolicy> = HashMap::new();
        for kv in self.store.tree(T::Repos).iter() {
            let (k, v) = kv?;
            if let Some(p) = decode::<RepoRecord>(T::Repos, &v)?.retention {
                repos.insert(String::from_utf8_lossy(&k).into_owned(), p);
            }
        }
        let mut pipelines: HashMap<String, RetentionPolicy> = HashMap::new();
        for kv in self.store.tree(T::Pipelines).iter() {
            let (k, v) = kv?;
            if let Some(p) = decode::<PipelineRecord>(T::Pipelines, &v)?.retention {
                pipelines.insert(String::from_utf8_lossy(&k).into_owned(), p);
            }
        }
        let floor = i64::try_from(self.cfg.min_keep_for.as_millis()).unwrap_or(i64::MAX);
        Ok(move |run: &RunHead| {
            let rules = over(defaults, repos.get(run.repo()));
            let mut rules = over(rules, pipelines.get(&run.pipeline_ref));
            if rules.keep_for_ms > 0 {
                rules.keep_for_ms = rules.keep_for_ms.max(floor);
            }
            rules
        })
    }

    /// One pass now (`dry_run`: only say what it would remove). Runs
    /// awaiting approval past `--approvals-expire-after` are cancelled
    /// first (a dry run counts them).
    pub async fn prune(self: &Arc<Self>, dry_run: bool) -> Result<PruneReport> {
        let expired = self.expire_approvals(dry_run).await?;
        let this = Arc::clone(self);
        let mut report = tokio::task::spawn_blocking(move || this.prune_blocking(dry_run))
            .await
            .map_err(|e| Error::Internal(format!("retention pass: {e}")))??;
        report.approvals_expired = expired;
        Ok(report)
    }

    /// Cancels the runs awaiting approval for longer than the server
    /// allows (`dry_run`: only counts them); how many.
    async fn expire_approvals(&self, dry_run: bool) -> Result<u64> {
        if self.cfg.approvals_expire_after.is_zero() {
            return Ok(0);
        }
        let age = i64::try_from(self.cfg.approvals_expire_after.as_millis()).unwrap_or(i64::MAX);
        let engine = Arc::clone(&self.engine);
        let cutoff = crate::store::now_ms().saturating_sub(age);
        let ids = tokio::task::spawn_blocking(move || engine.unapproved_before(cutoff))
            .await
            .map_err(|e| Error::Internal(format!("retention pass: {e}")))??;
        if dry_run {
            let engine = Arc::clone(&self.engine);
            let waiting = tokio::task::spawn_blocking(move || engine.deployments_waiting_before(cutoff))
                .await
                .map_err(|e| Error::Internal(format!("retention pass: {e}")))??;
            return Ok((ids.len() + waiting.len()) as u64);
        }
        let why =
            format!("not approved within {} (--approvals-expire-after)", as_flag(self.cfg.approvals_expire_after));
        let mut expired = 0;
        for id in ids {
            if self.engine.expire_unapproved(id, cutoff, &why).await? {
                expired += 1;
            }
        }
        if expired > 0 {
            tracing::info!(runs = expired, "retention cancelled runs that waited too long for approval");
        }
        // Deployments waiting for approval, the same way.
        let engine = Arc::clone(&self.engine);
        let waiting = tokio::task::spawn_blocking(move || engine.deployments_waiting_before(cutoff))
            .await
            .map_err(|e| Error::Internal(format!("retention pass: {e}")))??;
        let mut deployments = 0;
        for id in waiting {
            if self.engine.expire_deployment(id, cutoff, &why).await? {
                deployments += 1;
            }
        }
        if deployments > 0 {
            tracing::info!(deployments, "retention cancelled deployments that waited too long for approval");
        }
        Ok(expired + deployments)
    }

    fn prune_blocking(&self, dry_run: bool) -> Result<PruneReport> {
        let _one = self.pass.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let started_at = crate::store::now_ms();
        let rules = self.rules()?;
        let events = i64::try_from(self.cfg.keep_events_for.as_millis()).unwrap_or(i64::MAX);
        let stats = self.engine.prune(&rules, events, dry_run)?;
        let report = report(&stats, dry_run, started_at, started.elapsed());
        if !dry_run {
            if stats.removed > 0 || stats.event_batches > 0 {
                tracing::info!(
                    runs = stats.removed,
                    records = stats.records,
                    bytes = stats.bytes,
                    event_batches = stats.event_batches,
                    took_ms = report.took_ms,
                    "retention removed old runs"
                );
            }
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        }
        Ok(report)
    }

    /// Runs a pass every `--retention-every`, the first one period after
    /// start.
    pub fn spawn(self: &Arc<Self>) {
        if self.cfg.every.is_zero() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.cfg.every).await;
                if let Err(e) = this.prune(false).await {
                    tracing::warn!(error = %e, "retention pass failed");
                }
            }
        });
    }
}

/// `d` as a flag would say it: `30d`, `12h`, `90s`.
fn as_flag(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The API's report of a pass.
fn report(s: &PruneStats, dry_run: bool, started_ms: i64, took: Duration) -> PruneReport {
    let kept = |w: &str| s.kept.get(w).copied().unwrap_or(0);
    PruneReport {
        dry_run,
        runs_examined: s.examined,
        runs_removed: s.removed,
        removed_run_ids: s.removed_ids.iter().map(ToString::to_string).collect(),
        kept_unfinished: kept("unfinished"),
        kept_last: kept("last"),
        kept_last_success: kept("last_success"),
        kept_recent: kept("recent"),
        kept_forever: kept("forever"),
        records_removed: s.records,
        bytes_removed: s.bytes,
        event_batches_removed: s.event_batches,
        started_at: convert::timestamp(started_ms),
        took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        approvals_expired: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_override_field_by_field() {
        let base = Rules { keep_for_ms: 1000, keep_last: 5, keep_last_success: true };
        let repo = RetentionPolicy { keep_last: Some(2), ..Default::default() };
        let r = over(base, Some(&repo));
        assert_eq!(r, Rules { keep_last: 2, ..base });
        let forever = RetentionPolicy { keep_for_seconds: Some(0), keep_last_success: Some(false), keep_last: None };
        assert_eq!(over(r, Some(&forever)), Rules { keep_for_ms: 0, keep_last: 2, keep_last_success: false });
        assert!(check(&RetentionPolicy { keep_last: Some(MAX_KEEP_LAST + 1), ..Default::default() }).is_err());
        // Changing one field keeps the others; an empty change forgets.
        let stored = Some(forever);
        let change = RetentionPolicy { keep_last: Some(10), ..Default::default() };
        assert_eq!(merged(stored, change), Some(RetentionPolicy { keep_last: Some(10), ..forever }));
        assert_eq!(merged(stored, RetentionPolicy::default()), None);
        assert!(check(&RetentionPolicy { keep_for_seconds: Some(u64::MAX), ..Default::default() }).is_err());
    }
}
