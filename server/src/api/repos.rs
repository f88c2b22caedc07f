//! `viaduct.v1.Repos`: hosted repositories and mirrors.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CreateRepoRequest, DeleteRepoResponse, GetRepoRequest, ListReposRequest, ListReposResponse, Repo, Role,
    SyncRepoRequest, SyncRepoResponse, UpdateRepoRequest, create_repo_request, repos_server::Repos,
};

use crate::{
    access::{self, Access},
    convert,
    error::{Error, Result},
    forges::Forges,
    repos::HOSTED,
    store::records::RepoRecord,
    triggers::Triggers,
};

/// The Repos service.
pub struct ReposApi {
    triggers: Arc<Triggers>,
    forges: Arc<Forges>,
}

impl ReposApi {
    /// The service over `triggers`, with how reporting to `forges` goes.
    pub fn new(triggers: Arc<Triggers>, forges: Arc<Forges>) -> Self {
        Self { triggers, forges }
    }

    /// A repository as `access` may see it: its webhook secret only with
    /// the maintain role there.
    fn to_proto(&self, access: &Access, name: &str, r: &RepoRecord) -> Repo {
        let hosted = r.kind == HOSTED;
        let maintainer = access.grants.allows(Role::Maintain, Some(name));
        Repo {
            name: name.to_string(),
            kind: r.kind.clone(),
            url: r.url.clone(),
            clone_url: if hosted { self.triggers.repos().clone_url(name) } else { String::new() },
            path: if hosted { self.triggers.repos().path(name).display().to_string() } else { String::new() },
            default_branch: r.default_branch.clone(),
            webhook_url: if hosted { String::new() } else { self.triggers.repos().webhook_url(name) },
            webhook_secret: if maintainer { r.webhook_secret.clone() } else { String::new() },
            poll_interval_seconds: r.poll_interval_s,
            times: Some(viaduct_proto::v1::Times {
                created_at: convert::timestamp(r.created_ms),
                started_at: None,
                finished_at: None,
            }),
            last_sync: convert::timestamp(r.last_sync_ms),
            last_error: r.last_error.clone(),
            credentials: r.credentials.clone(),
            pull_requests: Some(r.pull_requests.clone().unwrap_or_else(crate::trust::default_policy)),
            retention: r.retention,
            forge: r.forge.clone(),
            forge_delivery: self.forges.delivery(name, r.forge.as_ref()).unwrap_or_else(|e| {
                tracing::warn!(repo = name, error = %e, "cannot read how forge statuses go");
                None
            }),
        }
    }
}

/// The caller's access, once it has the method's role on repository `name`.
fn allowed<T>(req: &Request<T>, name: &str) -> Result<Access> {
    let access = access::of(req)?.clone();
    access.target(format!("repository `{name}`"));
    access.require(name)?;
    Ok(access)
}

#[tonic::async_trait]
impl Repos for ReposApi {
    async fn create(&self, req: Request<CreateRepoRequest>) -> Result<Response<Repo>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        access.target(format!("repository `{}`", r.name));
        let rec = match r.source {
            Some(create_repo_request::Source::Hosted(h)) => {
                self.triggers.repos().create_hosted(&r.name, &h.default_branch).await?
            }
            Some(create_repo_request::Source::Mirror(m)) => self.triggers.create_mirror(&r.name, &m).await?,
            None => return Err(Error::invalid("set `hosted` or `mirror`").into()),
        };
        Ok(Response::new(self.to_proto(&access, &r.name, &rec)))
    }

    async fn get(&self, req: Request<GetRepoRequest>) -> Result<Response<Repo>, Status> {
        let access = allowed(&req, &req.get_ref().name)?;
        let name = req.into_inner().name;
        Ok(Response::new(self.to_proto(&access, &name, &self.triggers.repos().get(&name)?)))
    }

    async fn list(&self, req: Request<ListReposRequest>) -> Result<Response<ListReposResponse>, Status> {
        let access = access::of(&req)?;
        let visible = access.repos();
        let repos = self
            .triggers
            .repos()
            .list()?
            .iter()
            .filter(|(n, _)| visible.contains(n))
            .map(|(n, r)| self.to_proto(access, n, r))
            .collect();
        Ok(Response::new(ListReposResponse { repos }))
    }

    async fn delete(&self, req: Request<GetRepoRequest>) -> Result<Response<DeleteRepoResponse>, Status> {
        allowed(&req, &req.get_ref().name)?;
        self.triggers.delete(&req.into_inner().name).await?;
        Ok(Response::new(DeleteRepoResponse {}))
    }

    async fn sync(&self, req: Request<SyncRepoRequest>) -> Result<Response<SyncRepoResponse>, Status> {
        let access = allowed(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        // Who the runs a push starts are for (a deployment's starter): the
        // hook names the pusher; anyone else syncing is the one who asks.
        let pusher = if access.grants.allows(Role::Admin, None) { r.pusher } else { access.actor.clone() };
        let o = self.triggers.sync_as(&r.name, &pusher).await?;
        Ok(Response::new(SyncRepoResponse {
            run_ids: o.runs.iter().map(ToString::to_string).collect(),
            refs_changed: o.refs_changed,
        }))
    }

    async fn update(&self, req: Request<UpdateRepoRequest>) -> Result<Response<Repo>, Status> {
        let access = allowed(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        // The server sends the token to the connection's URL: whoever picks
        // the URL could read the token, so only an administrator may.
        if r.forge.is_some() && !access.grants.allows(Role::Admin, None) {
            return Err(Error::PermissionDenied("changing a forge connection needs the admin role".into()).into());
        }
        let rec = self.triggers.repos().update(&r.name, r.pull_requests, r.retention, r.forge).await?;
        Ok(Response::new(self.to_proto(&access, &r.name, &rec)))
    }
}
