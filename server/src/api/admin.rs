//! `viaduct.v1.Admin`: operating the server, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{PruneReport, PruneRequest, admin_server::Admin};

use crate::retention::Retention;

/// The Admin service.
pub struct AdminApi {
    retention: Arc<Retention>,
}

impl AdminApi {
    /// The service over `retention`.
    pub fn new(retention: Arc<Retention>) -> Self {
        Self { retention }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn prune(&self, req: Request<PruneRequest>) -> Result<Response<PruneReport>, Status> {
        Ok(Response::new(self.retention.prune(req.into_inner().dry_run).await?))
    }
}
