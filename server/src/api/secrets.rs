//! `viaduct.v1.Secrets`: values are written, never read back.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    DeleteSecretRequest, DeleteSecretResponse, ListSecretsRequest, ListSecretsResponse, SecretInfo, SetSecretRequest,
    Times, secrets_server::Secrets,
};

use crate::{
    access, convert,
    secrets::SecretBox,
    store::{Store, records::SecretRecord},
};

/// The Secrets service.
pub struct SecretsApi {
    store: Arc<Store>,
    secrets: Arc<SecretBox>,
}

impl SecretsApi {
    /// The service over the secrets in `store`, sealed by `secrets`.
    pub fn new(store: Arc<Store>, secrets: Arc<SecretBox>) -> Self {
        Self { store, secrets }
    }
}

fn info(name: String, created: i64, updated: i64, scope: viaduct_proto::v1::SecretScope) -> SecretInfo {
    SecretInfo {
        name,
        times: Some(Times {
            created_at: convert::timestamp(created),
            started_at: None,
            finished_at: convert::timestamp(updated),
        }),
        scope: Some(scope),
    }
}

#[tonic::async_trait]
impl Secrets for SecretsApi {
    async fn set(&self, req: Request<SetSecretRequest>) -> Result<Response<SecretInfo>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("secret `{}`", r.name));
        let scope = r.scope.unwrap_or_default();
        // The caller must maintain every repository the secret is for, now
        // and after: a repository's maintainer cannot take over another's.
        access.require_each(&scope.repos)?;
        if let Some(old) = SecretBox::scope(&self.store, &r.name)? {
            access.require_each(&old.repos)?;
        }
        let (created, updated) = self.secrets.set(&self.store, &r.name, &r.value, scope.clone()).await?;
        tracing::info!(secret = %r.name, "secret set");
        Ok(Response::new(info(r.name, created, updated, scope)))
    }

    async fn list(&self, req: Request<ListSecretsRequest>) -> Result<Response<ListSecretsResponse>, Status> {
        let access = access::of(&req)?;
        let secrets = SecretBox::list(&self.store)?
            .into_iter()
            .filter(|(_, r)| access.require_each(&r.scope.clone().unwrap_or_default().repos).is_ok())
            .map(|(n, r): (String, SecretRecord)| info(n, r.created_ms, r.updated_ms, r.scope.unwrap_or_default()))
            .collect();
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn delete(&self, req: Request<DeleteSecretRequest>) -> Result<Response<DeleteSecretResponse>, Status> {
        let access = access::of(&req)?.clone();
        let name = req.into_inner().name;
        access.target(format!("secret `{name}`"));
        if let Some(old) = SecretBox::scope(&self.store, &name)? {
            access.require_each(&old.repos)?;
        }
        SecretBox::delete(&self.store, &name).await?;
        Ok(Response::new(DeleteSecretResponse {}))
    }
}
