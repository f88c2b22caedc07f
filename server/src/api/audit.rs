//! `viaduct.v1.Audit`: reading the audit log, for admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{ListAuditRequest, ListAuditResponse, audit_server::Audit};

use crate::audit::AuditLog;

/// The Audit service.
pub struct AuditApi {
    log: Arc<AuditLog>,
}

impl AuditApi {
    /// The service over `log`.
    pub fn new(log: Arc<AuditLog>) -> Self {
        Self { log }
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn list(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(ListAuditResponse { entries: self.log.list(r.limit, r.before_id, &r.actor)? }))
    }
}
