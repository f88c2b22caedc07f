//! `viaduct.v1.Stats`: aggregates over runs (see `crate::stats`).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{StatsReport, StatsRequest, stats_server::Stats};

use crate::{
    access, convert,
    depot::Depot,
    error::Error,
    stats::{Query, report},
    store::{Store, now_ms},
};

/// The default range: the last week.
const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

/// The Stats service. One request at a time: a report reads up to
/// 200,000 runs, and more callers would only queue blocking threads.
pub struct StatsApi {
    store: Arc<Store>,
    depot: Arc<Depot>,
    one: Arc<tokio::sync::Semaphore>,
}

impl StatsApi {
    /// The service over `store` (runs) and `depot` (cache counters).
    pub fn new(store: Arc<Store>, depot: Arc<Depot>) -> Self {
        Self { store, depot, one: Arc::new(tokio::sync::Semaphore::new(1)) }
    }
}

#[tonic::async_trait]
impl Stats for StatsApi {
    async fn get(&self, req: Request<StatsRequest>) -> Result<Response<StatsReport>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(if r.repo.is_empty() { "all runs".to_string() } else { format!("repository `{}`", r.repo) });
        access.require(&r.repo)?;
        let to_ms = r.to.as_ref().map_or_else(now_ms, convert::millis);
        let q = Query {
            from_ms: r.from.as_ref().map_or_else(|| to_ms.saturating_sub(WEEK_MS), convert::millis),
            to_ms,
            bucket_seconds: if r.bucket_seconds == 0 { 86_400 } else { r.bucket_seconds },
            repo: r.repo,
            pipeline: r.pipeline,
        };
        q.check()?;
        // The server-wide cache rate is for those who may read every run.
        let hit_rate = if q.repo.is_empty() { self.depot.caches.hit_rate() } else { 0.0 };
        let permit = Arc::clone(&self.one).try_acquire_owned().map_err(|_| Error::RateLimited {
            message: "another stats report is being computed".into(),
            retry_after: std::time::Duration::from_secs(1),
        })?;
        let store = Arc::clone(&self.store);
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            report(&store, &q, hit_rate)
        })
        .await
        .map_err(|e| Error::Internal(format!("stats: {e}")))??;
        Ok(Response::new(out))
    }
}
