//! `viaduct.v1.Artifacts`: listing and downloading a run's artifacts.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    Artifact, ArtifactChunk, ArtifactLink, DownloadArtifactRequest, ListArtifactsRequest, ListArtifactsResponse,
    artifacts_server::Artifacts,
};

use super::transfer::{self, Chunks};
use crate::{
    access,
    convert::timestamp,
    depot::Depot,
    engine::Engine,
    error::{Error, Result},
    store::{
        keys::{JobKey, RunId},
        now_ms,
    },
};

/// How long a download link works.
pub const LINK_TTL: Duration = Duration::from_secs(3600);

/// The Artifacts service.
pub struct ArtifactsApi {
    depot: Arc<Depot>,
    engine: Arc<Engine>,
}

impl ArtifactsApi {
    /// The service over `depot`; runs' repositories from `engine`.
    pub fn new(depot: Arc<Depot>, engine: Arc<Engine>) -> Self {
        Self { depot, engine }
    }

    /// Run `id`, once the caller may read its repository.
    fn run<T>(&self, req: &Request<T>, id: &str) -> Result<RunId> {
        let run = RunId::parse(id)?;
        access::of(req)?.require(&self.engine.run_repo(run)?)?;
        Ok(run)
    }

    fn find(&self, req: &Request<DownloadArtifactRequest>) -> Result<Artifact> {
        let r = req.get_ref();
        let run = self.run(req, &r.run_id)?;
        let job = job_in(run, &r.job_id)?;
        self.depot.artifacts.find(run, job, &r.name)
    }
}

/// The job `job_id` (empty: none), which must belong to `run`.
fn job_in(run: RunId, job_id: &str) -> Result<Option<JobKey>> {
    if job_id.is_empty() {
        return Ok(None);
    }
    let job = JobKey::parse(job_id)?;
    if job.run != run {
        return Err(Error::invalid(format!("job {job_id} is not a job of run {}", run.0)));
    }
    Ok(Some(job))
}

/// The path of a signed download link for `a` on the HTTP port.
pub fn link_path(depot: &Depot, a: &Artifact, expires: i64) -> String {
    let sig = depot.artifacts.sign(&a.job_id, &a.name, expires);
    let name: Vec<String> = a.name.split('/').map(crate::artifacts::percent_encode).collect();
    format!("/artifacts/{}/{}/{}?expires={expires}&sig={sig}", a.run_id, a.job_id, name.join("/"))
}

#[tonic::async_trait]
impl Artifacts for ArtifactsApi {
    async fn list(&self, req: Request<ListArtifactsRequest>) -> Result<Response<ListArtifactsResponse>, Status> {
        let run = self.run(&req, &req.get_ref().run_id)?;
        let r = req.into_inner();
        let artifacts = self.depot.artifacts.list(run, job_in(run, &r.job_id)?)?;
        Ok(Response::new(ListArtifactsResponse { artifacts }))
    }

    type DownloadStream = Chunks<ArtifactChunk>;

    async fn download(&self, req: Request<DownloadArtifactRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let artifact = self.find(&req)?;
        let (file, _) = self.depot.blobs.open_read(&artifact.digest).await?;
        let mut meta = Some(artifact);
        let stream = transfer::file_stream(file, move |data, _| ArtifactChunk { artifact: meta.take(), data });
        Ok(Response::new(stream))
    }

    async fn link(&self, req: Request<DownloadArtifactRequest>) -> Result<Response<ArtifactLink>, Status> {
        let artifact = self.find(&req)?;
        let expires = (now_ms() / 1000) + LINK_TTL.as_secs() as i64;
        Ok(Response::new(ArtifactLink {
            path: link_path(&self.depot, &artifact, expires),
            expires_at: timestamp(expires * 1000),
        }))
    }
}
