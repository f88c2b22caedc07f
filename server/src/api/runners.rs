//! `viaduct.v1.Runners`: the fleet, for administrators.

use std::{pin::Pin, sync::Arc};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CreateRegistrationTokenRequest, CreateRegistrationTokenResponse, DrainRunnerRequest, FleetStats, FleetStatsRequest,
    GetRunnerRequest, ListRunnersRequest, ListRunnersResponse, PendingJobsRequest, PendingJobsResponse,
    RemoveRunnerResponse, Runner, RunnerEvent, RunnerEventKind, UpdateRunnerRequest, WatchRunnersRequest,
    runners_server::Runners,
};

use crate::{
    auth::{Auth, NewToken},
    convert::timestamp,
    engine::Engine,
    error::Error,
    runner_events::Feed,
    store::{keys::JobKey, now_ms, records::TokenKind},
};

type WatchStream = Pin<Box<dyn Stream<Item = Result<RunnerEvent, Status>> + Send>>;

/// The Runners service.
pub struct RunnersApi {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    feed: Arc<Feed>,
}

impl RunnersApi {
    /// The service over `engine` (starting the fleet's feed for watchers).
    pub fn new(engine: Arc<Engine>, auth: Arc<Auth>) -> Self {
        let reader = Arc::clone(&engine);
        let feed = Feed::start(Box::new(move || reader.list_runners()), engine.signals().runners.subscribe());
        Self { engine, auth, feed }
    }
}

#[tonic::async_trait]
impl Runners for RunnersApi {
    type WatchStream = WatchStream;

    async fn watch(&self, _req: Request<WatchRunnersRequest>) -> Result<Response<WatchStream>, Status> {
        let w = self.feed.watch()?;
        let (tx, rx) = mpsc::channel(64);
        let event = |kind: RunnerEventKind, runner: Option<Runner>| {
            Ok(RunnerEvent { kind: kind as i32, runner, time: timestamp(now_ms()) })
        };
        tokio::spawn(async move {
            let (mut changes, _permit) = (w.changes, w.permit);
            let snapshot = w.snapshot.into_iter().map(|r| event(RunnerEventKind::Snapshot, Some(r)));
            for e in snapshot.chain([event(RunnerEventKind::Synced, None)]) {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            loop {
                let batch = tokio::select! {
                    b = changes.recv() => b,
                    () = tx.closed() => return,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Status::aborted("this watcher fell behind the fleet's changes: watch again")))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for (kind, runner) in batch.iter() {
                    if tx.send(event(*kind, Some(runner.clone()))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(&self, _req: Request<ListRunnersRequest>) -> Result<Response<ListRunnersResponse>, Status> {
        Ok(Response::new(ListRunnersResponse { runners: self.engine.list_runners()? }))
    }

    async fn stats(&self, _req: Request<FleetStatsRequest>) -> Result<Response<FleetStats>, Status> {
        let m = self.engine.metrics();
        let n = |v: usize| v as u64;
        Ok(Response::new(FleetStats {
            queued: n(m.queued),
            running: n(m.running),
            runners_connected: n(m.runners_connected),
            slots: n(m.slots),
        }))
    }

    async fn pending(&self, req: Request<PendingJobsRequest>) -> Result<Response<PendingJobsResponse>, Status> {
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let p = self.engine.pending_jobs(limit, r.fit.as_ref());
        Ok(Response::new(PendingJobsResponse { jobs: p.jobs, total: p.total as u64, fitting: p.fitting as u64 }))
    }

    async fn get(&self, req: Request<GetRunnerRequest>) -> Result<Response<Runner>, Status> {
        Ok(Response::new(self.engine.get_runner(&req.into_inner().id)?))
    }

    async fn drain(&self, req: Request<DrainRunnerRequest>) -> Result<Response<Runner>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.engine.drain_runner(&r.id, r.drain)?))
    }

    async fn remove(&self, req: Request<GetRunnerRequest>) -> Result<Response<RemoveRunnerResponse>, Status> {
        let id = req.into_inner().id;
        self.engine.remove_runner(&id, |ws| self.auth.revoke_runner(&id, ws))?;
        self.auth.revoked();
        Ok(Response::new(RemoveRunnerResponse {}))
    }

    async fn update(&self, req: Request<UpdateRunnerRequest>) -> Result<Response<Runner>, Status> {
        let r = req.into_inner();
        if let Some(l) = &r.labels {
            super::agent::not_toolchains(&l.labels)?;
        }
        let change = crate::engine::RunnerChange {
            labels: r.labels.map(|l| l.labels),
            slots: r.slots,
            executors: r.executors.map(|e| e.executors().collect()),
            protected: r.protected,
        };
        Ok(Response::new(self.engine.update_runner(&r.id, change)?))
    }

    async fn create_registration_token(
        &self,
        req: Request<CreateRegistrationTokenRequest>,
    ) -> Result<Response<CreateRegistrationTokenResponse>, Status> {
        let r = req.into_inner();
        let (uses, expires_ms) = super::tokens::registration(r.uses, r.reusable, r.expires_in_seconds)?;
        let job = match r.job_id.as_str() {
            "" => String::new(),
            id => {
                let key = JobKey::parse(id)?;
                if uses != 1 {
                    return Err(
                        Error::invalid("a token bound to a job registers one runner: no `uses` or `reusable`").into()
                    );
                }
                if !self.engine.job_waiting(key)? {
                    return Err(Error::precondition(format!(
                        "job {key} is not waiting to run: a runner bound to it would have nothing to do"
                    ))
                    .into());
                }
                key.to_string()
            }
        };
        let name = match job.as_str() {
            "" => format!("registration token ({uses} use{})", if uses == 1 { "" } else { "s" }),
            job => format!("registration token for job {job}"),
        };
        let new = NewToken { name, kind: TokenKind::Registration, uses, expires_ms, job, ..Default::default() };
        let (token, info) = self.auth.issue(new).await?;
        Ok(Response::new(CreateRegistrationTokenResponse { token, info: Some(info) }))
    }
}
