//! `Stats.Get`: how runs went over a range of time, aggregated on the
//! server — runs per bucket by result, success rate, run duration and
//! queue wait percentiles, per pipeline and per runner label.
//!
//! It walks runs newest first (ids grow with acceptance time) — a
//! repository's through its index, so a repository's reader walks only
//! its runs — until one was accepted before the range, reading only the
//! fields it needs ([`RunHead`], [`JobHead`]); bounded at [`MAX_SCAN`]
//! runs and [`MAX_JOB_READS`] jobs (then `truncated`). Who may: `read` on
//! the repository asked about, or globally for all runs (`access`); the
//! API runs one request at a time.

use std::collections::HashMap;

use viaduct_proto::v1::{GroupStats, Percentiles, StatsBucket, StatsReport, StatsSummary, Status};

use crate::{
    convert,
    error::{Error, Result},
    store::{
        Store, T, decode,
        keys::RunId,
        records::{JobHead, RunHead},
    },
};

/// Most runs one request reads.
pub const MAX_SCAN: u64 = 200_000;
/// Most job records one request reads.
pub const MAX_JOB_READS: u64 = 1_000_000;
/// Most buckets in a range.
pub const MAX_BUCKETS: i64 = 1000;
/// The bucket widths allowed (seconds).
pub const BUCKETS: [u32; 3] = [3600, 86_400, 604_800];

/// What is asked.
#[derive(Debug, Clone)]
pub struct Query {
    /// Range start (ms, inclusive).
    pub from_ms: i64,
    /// Range end (ms, exclusive).
    pub to_ms: i64,
    /// Bucket width (seconds).
    pub bucket_seconds: u32,
    /// Only this repository (empty: all).
    pub repo: String,
    /// Only this pipeline (empty: all).
    pub pipeline: String,
}

impl Query {
    /// Refuses a query out of bounds.
    pub fn check(&self) -> Result<()> {
        if !BUCKETS.contains(&self.bucket_seconds) {
            return Err(Error::invalid("bucket_seconds is 3600 (hour), 86400 (day) or 604800 (week)"));
        }
        if self.from_ms < 0 {
            return Err(Error::invalid("`from` is before 1970"));
        }
        if self.to_ms <= self.from_ms {
            return Err(Error::invalid("the range is empty: `from` must be before `to`"));
        }
        let width = i64::from(self.bucket_seconds) * 1000;
        let buckets = ceil_div(self.to_ms.saturating_sub(self.from_ms - self.from_ms.rem_euclid(width)), width);
        if buckets > MAX_BUCKETS {
            return Err(Error::invalid(format!(
                "{buckets} buckets in the range: at most {MAX_BUCKETS} (a wider bucket, or a shorter range)"
            )));
        }
        Ok(())
    }
}

/// `a / b` rounded up (`a` ≥ 0, `b` > 0), without overflow.
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// Durations and counts of one group, gathered as runs are read.
#[derive(Default)]
struct Tally {
    runs: u64,
    succeeded: u64,
    failed: u64,
    other: u64,
    run_ms: Vec<u64>,
    jobs: u64,
    wait_ms: Vec<u64>,
}

impl Tally {
    fn run(&mut self, r: &RunHead) {
        self.runs += 1;
        match r.status() {
            Status::Success => self.succeeded += 1,
            Status::Failure => self.failed += 1,
            Status::Cancelled | Status::TimedOut | Status::Skipped | Status::RunnerLost => self.other += 1,
            _ => return,
        }
        // A run that failed before any job (its file invalid) has no
        // duration worth the name.
        if r.error.is_empty() && r.finished_ms >= r.created_ms && r.created_ms > 0 {
            self.run_ms.push((r.finished_ms - r.created_ms) as u64);
        }
    }

    fn job(&mut self, wait_ms: Option<u64>) {
        if let Some(w) = wait_ms {
            self.jobs += 1;
            self.wait_ms.push(w);
        }
    }

    fn summary(mut self) -> StatsSummary {
        let ended = self.succeeded + self.failed + self.other;
        StatsSummary {
            runs: self.runs,
            succeeded: self.succeeded,
            failed: self.failed,
            other: self.other,
            success_rate: if ended == 0 { 0.0 } else { self.succeeded as f64 / ended as f64 },
            run_duration: Some(percentiles(&mut self.run_ms)),
            jobs: self.jobs,
            queue_wait: Some(percentiles(&mut self.wait_ms)),
        }
    }
}

/// Nearest-rank percentiles of `v`.
fn percentiles(v: &mut [u64]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles { count: v.len() as u64, p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99) }
}

/// The ids of the runs `q` is about, newest first: a repository's from its
/// index (so a repository's reader walks only its runs), else every run.
fn run_ids<'s>(store: &'s Store, q: &Query) -> Box<dyn Iterator<Item = Result<(RunId, RunHead)>> + 's> {
    let load = move |id: RunId| -> Result<Option<(RunId, RunHead)>> {
        Ok(store.tree(T::Runs).get(id.key())?.and_then(|v| decode::<RunHead>(T::Runs, &v).ok()).map(|r| (id, r)))
    };
    if q.repo.is_empty() {
        Box::new(store.tree(T::Runs).iter().rev().filter_map(|kv| match kv {
            Err(e) => Some(Err(e)),
            Ok((k, v)) => {
                let id = RunId::from_key(&k)?;
                decode::<RunHead>(T::Runs, &v).ok().map(|r| Ok((id, r)))
            }
        }))
    } else {
        let ids = crate::engine::index::scan(store, crate::engine::index::Field::Repo, q.repo.as_bytes(), None);
        Box::new(ids.filter_map(move |id| id.and_then(load).transpose()))
    }
}

/// The report for `q` (blocking: run it on a blocking thread). Buckets
/// start at whole hours, days or weeks (UTC) from the one holding `from`.
pub fn report(store: &Store, q: &Query, cache_hit_rate: f64) -> Result<StatsReport> {
    q.check()?;
    let width = i64::from(q.bucket_seconds) * 1000;
    let from_ms = q.from_ms - q.from_ms.rem_euclid(width);
    let count = usize::try_from(ceil_div(q.to_ms - from_ms, width)).unwrap_or(0);
    let mut buckets: Vec<Tally> = (0..count).map(|_| Tally::default()).collect();
    let mut total = Tally::default();
    let mut pipelines: HashMap<String, Tally> = HashMap::new();
    let mut labels: HashMap<String, Tally> = HashMap::new();
    let (mut scanned, mut jobs_read, mut truncated) = (0u64, 0u64, false);
    for item in run_ids(store, q) {
        let (id, run) = item?;
        if scanned == MAX_SCAN || jobs_read >= MAX_JOB_READS {
            truncated = true;
            break;
        }
        scanned += 1;
        if run.created_ms >= q.to_ms {
            continue;
        }
        if run.created_ms < q.from_ms {
            break;
        }
        if !q.pipeline.is_empty() && run.pipeline_name() != q.pipeline {
            continue;
        }
        let slot = usize::try_from((run.created_ms - from_ms) / width).unwrap_or(0).min(count.saturating_sub(1));
        let group = pipelines.entry(run.pipeline_name().to_string()).or_default();
        for t in [&mut buckets[slot], &mut total, group] {
            t.run(&run);
        }
        // The run's jobs, one range read; a record that does not decode is
        // skipped.
        for kv in store.tree(T::Jobs).scan_prefix(id.key()) {
            let (_, v) = kv?;
            jobs_read += 1;
            let Ok(job) = decode::<JobHead>(T::Jobs, &v) else { continue };
            let wait = job.queue_wait_ms();
            buckets[slot].job(wait);
            total.job(wait);
            pipelines.entry(run.pipeline_name().to_string()).or_default().job(wait);
            for label in &job.runs_on {
                labels.entry(label.clone()).or_default().job(wait);
            }
        }
    }
    let grouped = |m: HashMap<String, Tally>, by_jobs: bool| {
        let mut v: Vec<(String, Tally)> = m.into_iter().collect();
        v.sort_by(|a, b| {
            let key = |t: &Tally| if by_jobs { t.jobs } else { t.runs };
            key(&b.1).cmp(&key(&a.1)).then_with(|| a.0.cmp(&b.0))
        });
        v.into_iter().map(|(name, t)| GroupStats { name, summary: Some(t.summary()) }).collect()
    };
    Ok(StatsReport {
        from: convert::timestamp(q.from_ms),
        to: convert::timestamp(q.to_ms),
        bucket_seconds: q.bucket_seconds,
        buckets: buckets
            .into_iter()
            .enumerate()
            .map(|(i, t)| StatsBucket {
                start: convert::timestamp(from_ms + i as i64 * width),
                summary: Some(t.summary()),
            })
            .collect(),
        total: Some(total.summary()),
        pipelines: grouped(pipelines, false),
        labels: grouped(labels, true),
        runs_scanned: scanned,
        truncated,
        cache_hit_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.count, p.p50_ms, p.p90_ms, p.p99_ms), (100, 50, 90, 99));
        assert_eq!(percentiles(&mut []), Percentiles::default());
    }

    #[test]
    fn queries_are_bounded() {
        let q = |from_ms, to_ms, bucket_seconds| Query {
            from_ms,
            to_ms,
            bucket_seconds,
            repo: String::new(),
            pipeline: String::new(),
        };
        assert!(q(0, 86_400_000, 3600).check().is_ok());
        assert!(q(0, 86_400_000, 60).check().is_err(), "a bucket width not offered");
        assert!(q(10, 10, 3600).check().is_err(), "an empty range");
        assert!(q(0, 1001 * 3_600_000, 3600).check().is_err(), "too many buckets");
        assert!(q(i64::MIN, i64::MAX, 604_800).check().is_err(), "no overflow on extreme times");
        assert!(q(-5, 10, 3600).check().is_err(), "before 1970");
    }
}

#[cfg(test)]
mod report_tests {
    use viaduct_proto::v1::Status;

    use super::*;
    use crate::store::{
        WriteSet,
        keys::JobKey,
        records::{JobRecord, RunRecord},
    };

    #[test]
    fn runs_of_the_range_are_counted_by_bucket_result_and_pipeline() {
        let store = Store::memory();
        let mut ws = WriteSet::default();
        let hour = 3_600_000;
        for (i, (name, status, created)) in
            [("a", Status::Success, hour + 5), ("a", Status::Failure, 2 * hour), ("b", Status::Success, 2 * hour + 9)]
                .into_iter()
                .enumerate()
        {
            let id = RunId(i as u64 + 1);
            let run = RunRecord {
                pipeline: name.into(),
                status: status as i32,
                created_ms: created,
                finished_ms: created + 1000,
                job_count: 1,
                ..Default::default()
            };
            ws.put(T::Runs, id.key(), &run);
            let job = JobRecord {
                status: status as i32,
                queued_ms: created,
                started_ms: created + 10,
                runs_on: vec!["linux".into()],
                ..Default::default()
            };
            ws.put(T::Jobs, JobKey::new(id, 1).key(), &job);
        }
        store.commit(&ws).unwrap();
        let q = Query {
            from_ms: hour,
            to_ms: 3 * hour,
            bucket_seconds: 3600,
            repo: String::new(),
            pipeline: String::new(),
        };
        let r = report(&store, &q, 0.5).unwrap();
        let total = r.total.unwrap();
        assert_eq!((total.runs, total.succeeded, total.failed, total.jobs), (3, 2, 1, 3));
        assert_eq!(total.run_duration.unwrap().p50_ms, 1000);
        assert_eq!(total.queue_wait.unwrap().p99_ms, 10);
        let per_bucket: Vec<u64> = r.buckets.iter().map(|b| b.summary.as_ref().unwrap().runs).collect();
        assert_eq!(per_bucket, [1, 2]);
        assert_eq!(r.pipelines[0].name, "a");
        assert_eq!(r.labels[0].summary.as_ref().unwrap().jobs, 3);
    }
}
