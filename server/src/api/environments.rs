//! `viaduct.v1.Environments`, `viaduct.v1.Deployments` and
//! `viaduct.v1.Services`: a repository's deployment targets, the record of
//! what was deployed where, and the services deployments registered.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    DeleteEnvironmentResponse, DeleteServiceResponse, DeployedService, Deployment, Environment, GetDeploymentRequest,
    GetEnvironmentRequest, GetServiceRequest, ListDeploymentsRequest, ListDeploymentsResponse, ListEnvironmentsRequest,
    ListEnvironmentsResponse, ListServicesRequest, ListServicesResponse, PromoteRequest, PromoteResponse,
    PutEnvironmentRequest, ReviewDeploymentRequest, Role, RollbackRequest, deployments_server::Deployments,
    environments_server::Environments, services_server::Services,
};

use crate::{
    access::{self, Access},
    convert,
    engine::Engine,
    environments::{self as envs, EnvironmentSpec},
    error::Error,
    store::{
        Store, T,
        keys::{JobKey, RunId},
        records::JobRecord,
    },
};

/// The three services, over the store and the engine.
#[derive(Clone)]
pub struct EnvironmentsApi {
    store: Arc<Store>,
    engine: Arc<Engine>,
    /// Whether an artifact still exists (a promotion or rollback needs them).
    depot: Arc<crate::depot::Depot>,
}

impl EnvironmentsApi {
    /// The services over `store` and `engine`.
    pub fn new(store: Arc<Store>, engine: Arc<Engine>, depot: Arc<crate::depot::Depot>) -> Self {
        Self { store, engine, depot }
    }

    /// An environment with its current and open deployments.
    fn environment(&self, repo: &str, name: &str) -> Result<Environment, Error> {
        let rec = envs::get(&self.store, repo, name)?;
        let mut env = convert::environment(repo, name, &rec);
        env.current = envs::successes(&self.store, repo, name, 1)?.first().map(|(id, d)| convert::deployment(*id, d));
        env.open = envs::open(&self.store, repo, name)?.iter().map(|(id, d)| convert::deployment(*id, d)).collect();
        Ok(env)
    }

    /// The deployment a review names (by id, or by its job), checked
    /// against the caller's role on its repository (and, `approving`, the
    /// self-approval rule: anyone who may review may reject).
    fn reviewed(&self, access: &Access, r: &ReviewDeploymentRequest, approving: bool) -> Result<u64, Error> {
        let id = if r.id != 0 {
            r.id
        } else {
            let job = if r.job.contains('.') { r.job.clone() } else { format!("{}.{}", r.run_id, r.job) };
            let key = JobKey::parse(&job)?;
            let id = self.engine.get_run(key.run)?.jobs.iter().find(|j| j.id == job).map_or(0, |j| j.deployment);
            if id == 0 {
                return Err(Error::not_found(format!("job {job} has no deployment")));
            }
            id
        };
        let d = envs::deployment(&self.store, id)?;
        access.target(format!("deployment {id} to `{}` of `{}`", d.environment, d.repo));
        let role = Role::try_from(d.approval_role).unwrap_or(Role::Unspecified);
        let role = if role == Role::Unspecified { Role::Trigger } else { role };
        access.require_role(role, &d.repo)?;
        let no_self = envs::get(&self.store, &d.repo, &d.environment)
            .ok()
            .and_then(|e| e.rules)
            .is_some_and(|rules| rules.prevent_self_approval);
        if approving && no_self {
            if d.starter.is_empty() && !access.grants.allows(Role::Admin, None) {
                return Err(Error::PermissionDenied(format!(
                    "who started this run is not known to the server (a push over the filesystem, a forge's \
                     webhook or a schedule; shown as {}): `{}` lets only an administrator approve it",
                    d.triggered_by, d.environment
                )));
            }
            if d.starter == access.actor || (!access.owner.is_empty() && d.starter == access.owner) {
                return Err(Error::PermissionDenied(format!(
                    "{} started this run: `{}` needs someone else to review its deployments",
                    access.actor, d.environment
                )));
            }
        }
        Ok(id)
    }

    /// Refuses a redeploy whose job got artifacts that are gone.
    fn check_artifacts(&self, source: u64) -> Result<(), Error> {
        let d = envs::deployment(&self.store, source)?;
        let key = JobKey::new(RunId(d.run), d.job);
        let Some(job) = self.store.get::<JobRecord>(T::Jobs, key.key())? else { return Ok(()) };
        for from in &job.artifacts_from {
            let from = JobKey::parse(from)?;
            if self.depot.artifacts.list(from.run, Some(from))?.is_empty() {
                return Err(Error::precondition(format!(
                    "the artifacts of job {from}, which deployment {source} deployed, are gone (expired or pruned): \
                     build and deploy again"
                )));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Environments for EnvironmentsApi {
    async fn put(&self, req: Request<PutEnvironmentRequest>) -> Result<Response<Environment>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("environment `{}` of `{}`", r.name, r.repo));
        access.require(&r.repo)?;
        let spec = EnvironmentSpec {
            rules: r.rules.unwrap_or_default(),
            variables: r.variables,
            url: r.url,
            description: r.description,
        };
        envs::put(&self.store, &r.repo, &r.name, spec, crate::store::now_ms()).await?;
        Ok(Response::new(self.environment(&r.repo, &r.name)?))
    }

    async fn get(&self, req: Request<GetEnvironmentRequest>) -> Result<Response<Environment>, Status> {
        let access = access::of(&req)?;
        let r = req.get_ref();
        access.require(&r.repo)?;
        Ok(Response::new(self.environment(&r.repo, &r.name)?))
    }

    async fn list(&self, req: Request<ListEnvironmentsRequest>) -> Result<Response<ListEnvironmentsResponse>, Status> {
        let access = access::of(&req)?;
        let repo = &req.get_ref().repo;
        access.require(repo)?;
        let mut environments = Vec::new();
        for (name, _) in envs::list(&self.store, repo)? {
            environments.push(self.environment(repo, &name)?);
        }
        Ok(Response::new(ListEnvironmentsResponse { environments }))
    }

    async fn delete(&self, req: Request<GetEnvironmentRequest>) -> Result<Response<DeleteEnvironmentResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("environment `{}` of `{}`", r.name, r.repo));
        access.require(&r.repo)?;
        self.engine.delete_environment(&r.repo, &r.name).await?;
        Ok(Response::new(DeleteEnvironmentResponse {}))
    }
}

#[tonic::async_trait]
impl Deployments for EnvironmentsApi {
    async fn list(&self, req: Request<ListDeploymentsRequest>) -> Result<Response<ListDeploymentsResponse>, Status> {
        let access = access::of(&req)?;
        let r = req.get_ref();
        access.require(&r.repo)?;
        let limit = if r.limit == 0 { 50 } else { r.limit.min(500) } as usize;
        let env = (!r.environment.is_empty()).then_some(r.environment.as_str());
        let deployments = envs::deployments(&self.store, &r.repo, env, limit)?
            .iter()
            .map(|(id, d)| convert::deployment(*id, d))
            .collect();
        Ok(Response::new(ListDeploymentsResponse { deployments }))
    }

    async fn get(&self, req: Request<GetDeploymentRequest>) -> Result<Response<Deployment>, Status> {
        let access = access::of(&req)?;
        let id = req.get_ref().id;
        let d = envs::deployment(&self.store, id)?;
        access.require(&d.repo)?;
        Ok(Response::new(convert::deployment(id, &d)))
    }

    async fn approve(&self, req: Request<ReviewDeploymentRequest>) -> Result<Response<Deployment>, Status> {
        let access = access::of(&req)?.clone();
        let id = self.reviewed(&access, req.get_ref(), true)?;
        self.engine.review_deployment(id, &access.actor, true, &req.get_ref().comment).await?;
        Ok(Response::new(convert::deployment(id, &envs::deployment(&self.store, id)?)))
    }

    async fn reject(&self, req: Request<ReviewDeploymentRequest>) -> Result<Response<Deployment>, Status> {
        let access = access::of(&req)?.clone();
        let id = self.reviewed(&access, req.get_ref(), false)?;
        self.engine.review_deployment(id, &access.actor, false, &req.get_ref().comment).await?;
        Ok(Response::new(convert::deployment(id, &envs::deployment(&self.store, id)?)))
    }

    async fn promote(&self, req: Request<PromoteRequest>) -> Result<Response<PromoteResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("promotion from `{}` to `{}` of `{}`", r.from, r.to, r.repo));
        access.require(&r.repo)?;
        envs::get(&self.store, &r.repo, &r.to)?;
        let Some((source, _)) = envs::successes(&self.store, &r.repo, &r.from, 1)?.into_iter().next() else {
            return Err(Error::precondition(format!("`{}` has no successful deployment to promote", r.from)).into());
        };
        self.check_artifacts(source)?;
        let run = self.engine.redeploy(source, &r.to, "promote", &access.actor).await?;
        let source = convert::deployment(source, &envs::deployment(&self.store, source)?);
        Ok(Response::new(PromoteResponse { run_id: run.to_string(), source: Some(source) }))
    }

    async fn rollback(&self, req: Request<RollbackRequest>) -> Result<Response<PromoteResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("rollback of `{}` of `{}`", r.environment, r.repo));
        access.require(&r.repo)?;
        envs::get(&self.store, &r.repo, &r.environment)?;
        let source = if r.to_deployment != 0 {
            let d = envs::deployment(&self.store, r.to_deployment)?;
            if d.repo != r.repo || d.environment != r.environment {
                return Err(Error::invalid(format!(
                    "deployment {} was to `{}` of `{}`, not to `{}` of `{}`",
                    r.to_deployment, d.environment, d.repo, r.environment, r.repo
                ))
                .into());
            }
            r.to_deployment
        } else {
            let last = envs::successes(&self.store, &r.repo, &r.environment, 2)?;
            match last.get(1) {
                Some((id, _)) => *id,
                None => {
                    return Err(Error::precondition(format!(
                        "`{}` has no successful deployment before its current one to roll back to",
                        r.environment
                    ))
                    .into());
                }
            }
        };
        self.check_artifacts(source)?;
        let run = self.engine.redeploy(source, &r.environment, "rollback", &access.actor).await?;
        let source = convert::deployment(source, &envs::deployment(&self.store, source)?);
        Ok(Response::new(PromoteResponse { run_id: run.to_string(), source: Some(source) }))
    }
}

#[tonic::async_trait]
impl Services for EnvironmentsApi {
    async fn list(&self, req: Request<ListServicesRequest>) -> Result<Response<ListServicesResponse>, Status> {
        let access = access::of(&req)?;
        let r = req.get_ref();
        access.require(&r.repo)?;
        let env = (!r.environment.is_empty()).then_some(r.environment.as_str());
        let services = envs::services(&self.store, &r.repo, env)?
            .iter()
            .map(|(env, s, h)| convert::deployed_service(&r.repo, env, s, h.as_ref(), false))
            .collect();
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn get(&self, req: Request<GetServiceRequest>) -> Result<Response<DeployedService>, Status> {
        let access = access::of(&req)?;
        let r = req.get_ref();
        access.require(&r.repo)?;
        let found = envs::services(&self.store, &r.repo, Some(&r.environment))?
            .into_iter()
            .find(|(_, s, _)| s.decl.as_ref().is_some_and(|d| d.name == r.name))
            .ok_or_else(|| {
                Error::not_found(format!("service `{}` of `{}` in `{}` not found", r.name, r.environment, r.repo))
            })?;
        Ok(Response::new(convert::deployed_service(&r.repo, &found.0, &found.1, found.2.as_ref(), true)))
    }

    async fn delete(&self, req: Request<GetServiceRequest>) -> Result<Response<DeleteServiceResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("service `{}` of `{}` in `{}`", r.name, r.environment, r.repo));
        access.require(&r.repo)?;
        envs::delete_service(&self.store, &r.repo, &r.environment, &r.name).await?;
        Ok(Response::new(DeleteServiceResponse {}))
    }
}
