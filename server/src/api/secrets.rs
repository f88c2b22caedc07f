//! `viaduct.v1.Secrets`: values are written, never read back.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    DeleteSecretRequest, DeleteSecretResponse, ListSecretsRequest, ListSecretsResponse, SecretInfo, SetSecretRequest,
    Times, secrets_server::Secrets,
};

use crate::{
    convert,
    engine::Engine,
    error::Error,
    secrets::SecretBox,
    store::{T, WriteSet},
};

/// The Secrets service.
pub struct SecretsApi {
    engine: Arc<Engine>,
}

impl SecretsApi {
    /// The service over `engine`'s store and secret box.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn info(name: String, created: i64, updated: i64) -> SecretInfo {
    SecretInfo {
        name,
        times: Some(Times {
            created_at: convert::timestamp(created),
            started_at: None,
            finished_at: convert::timestamp(updated),
        }),
    }
}

#[tonic::async_trait]
impl Secrets for SecretsApi {
    async fn set(&self, req: Request<SetSecretRequest>) -> Result<Response<SecretInfo>, Status> {
        let r = req.into_inner();
        let (created, updated) = self.engine.secret_box().set(self.engine.store(), &r.name, &r.value).await?;
        tracing::info!(secret = %r.name, "secret set");
        Ok(Response::new(info(r.name, created, updated)))
    }

    async fn list(&self, _req: Request<ListSecretsRequest>) -> Result<Response<ListSecretsResponse>, Status> {
        let secrets = SecretBox::list(self.engine.store())?.into_iter().map(|(n, c, u)| info(n, c, u)).collect();
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn delete(&self, req: Request<DeleteSecretRequest>) -> Result<Response<DeleteSecretResponse>, Status> {
        let name = req.into_inner().name;
        if self.engine.store().tree(T::Secrets).get(&name).map_err(Error::from)?.is_none() {
            return Err(Error::not_found(format!("secret `{name}` not found")).into());
        }
        let mut ws = WriteSet::default();
        ws.delete(T::Secrets, name.as_bytes());
        self.engine.store().commit_durable(&ws).await?;
        Ok(Response::new(DeleteSecretResponse {}))
    }
}
