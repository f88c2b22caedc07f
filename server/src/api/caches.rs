//! `viaduct.v1.Caches`: inspecting and clearing build caches.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CacheStats, CacheStatsRequest, DeleteCacheRequest, DeleteCacheResponse, ListCachesRequest, ListCachesResponse,
    caches_server::Caches,
};

use crate::{access, depot::Depot};

/// The repository of a cache scope (`pipeline:NAME` scopes belong to none).
fn repo_of(scope: &str) -> &str {
    if scope.starts_with("pipeline:") { "" } else { scope }
}

/// The Caches service.
pub struct CachesApi {
    depot: Arc<Depot>,
}

impl CachesApi {
    /// The service over `depot`.
    pub fn new(depot: Arc<Depot>) -> Self {
        Self { depot }
    }
}

#[tonic::async_trait]
impl Caches for CachesApi {
    async fn list(&self, req: Request<ListCachesRequest>) -> Result<Response<ListCachesResponse>, Status> {
        let visible = access::of(&req)?.repos();
        let r = req.into_inner();
        let entries = self
            .depot
            .caches
            .list(&r.scope, &r.key_prefix)?
            .into_iter()
            .filter_map(|c| c.entry)
            .filter(|e| visible.contains(repo_of(&e.scope)))
            .collect();
        Ok(Response::new(ListCachesResponse { entries }))
    }

    async fn delete(&self, req: Request<DeleteCacheRequest>) -> Result<Response<DeleteCacheResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("caches of `{}`", r.scope));
        access.require(repo_of(&r.scope))?;
        let deleted = self.depot.caches.delete(&r.scope, &r.branch, &r.key_prefix).await?;
        self.depot.request_retention();
        Ok(Response::new(DeleteCacheResponse { deleted }))
    }

    async fn stats(&self, _req: Request<CacheStatsRequest>) -> Result<Response<CacheStats>, Status> {
        Ok(Response::new(self.depot.caches.stats()?))
    }
}
