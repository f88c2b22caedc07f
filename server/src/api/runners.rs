//! `viaduct.v1.Runners`: the fleet, for administrators.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CreateRegistrationTokenRequest, CreateRegistrationTokenResponse, DrainRunnerRequest, FleetStats, FleetStatsRequest,
    GetRunnerRequest, ListRunnersRequest, ListRunnersResponse, RemoveRunnerResponse, Runner, UpdateRunnerRequest,
    runners_server::Runners,
};

use crate::{auth::Auth, engine::Engine};

/// The Runners service.
pub struct RunnersApi {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
}

impl RunnersApi {
    /// The service over `engine`.
    pub fn new(engine: Arc<Engine>, auth: Arc<Auth>) -> Self {
        Self { engine, auth }
    }
}

#[tonic::async_trait]
impl Runners for RunnersApi {
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
        Ok(Response::new(RemoveRunnerResponse {}))
    }

    async fn update(&self, req: Request<UpdateRunnerRequest>) -> Result<Response<Runner>, Status> {
        let r = req.into_inner();
        let change = crate::engine::RunnerChange {
            labels: r.labels.map(|l| l.labels),
            slots: r.slots,
            executors: r.executors.map(|e| e.executors),
            protected: r.protected,
        };
        Ok(Response::new(self.engine.update_runner(&r.id, change)?))
    }

    async fn create_registration_token(
        &self,
        req: Request<CreateRegistrationTokenRequest>,
    ) -> Result<Response<CreateRegistrationTokenResponse>, Status> {
        let token = self.auth.create_registration_token(req.into_inner().reusable)?;
        Ok(Response::new(CreateRegistrationTokenResponse { token }))
    }
}
