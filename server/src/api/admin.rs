//! `viaduct.v1.Admin`: operating the server, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{AdminStatus, AdminStatusRequest, PruneReport, PruneRequest, admin_server::Admin};

use crate::{retention::Retention, status::Status as ServerStatus};

/// The Admin service.
pub struct AdminApi {
    retention: Arc<Retention>,
    status: Arc<ServerStatus>,
}

impl AdminApi {
    /// The service over `retention` and `status`.
    pub fn new(retention: Arc<Retention>, status: Arc<ServerStatus>) -> Self {
        Self { retention, status }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn prune(&self, req: Request<PruneRequest>) -> Result<Response<PruneReport>, Status> {
        Ok(Response::new(self.retention.prune(req.into_inner().dry_run).await?))
    }

    async fn status(&self, _req: Request<AdminStatusRequest>) -> Result<Response<AdminStatus>, Status> {
        Ok(Response::new(self.status.read().await?))
    }
}
