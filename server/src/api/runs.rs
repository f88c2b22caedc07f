//! `viaduct.v1.Runs`: submit, trigger, inspect, cancel, retry and watch.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    ApproveRunRequest, CancelRunRequest, GetRunRequest, ListRunsRequest, ListRunsResponse, RetryRunRequest, Run,
    RunEvent, RunSource, SubmitRequest, SubmitResponse, TriggerRequest, WatchRequest, runs_server::Runs,
    submit_request,
};

use crate::{
    access::{self, Access, Repos},
    engine::{Engine, read::RunQuery},
    error::{Error, Result},
    launch::Cause,
    launch::{self, Launch, Origin},
    store::{
        Store, WriteSet,
        keys::{JobKey, RunId},
    },
    triggers::Triggers,
};

/// The Runs service.
pub struct RunsApi {
    engine: Arc<Engine>,
    triggers: Arc<Triggers>,
    store: Arc<Store>,
}

impl RunsApi {
    /// The service over `engine`; runs of repositories through `triggers`.
    pub fn new(engine: Arc<Engine>, triggers: Arc<Triggers>, store: Arc<Store>) -> Self {
        Self { engine, triggers, store }
    }

    async fn start(&self, origin: Origin, cause: Cause) -> Result<SubmitResponse> {
        let launch = Launch::new(origin, cause);
        let id = launch::start(&self.engine, &self.store, self.triggers.plugins(), launch, WriteSet::default())
            .await?
            .ok_or_else(|| Error::Internal("a submitted pipeline started no run".into()))?;
        Ok(SubmitResponse { run_id: id.to_string(), run: Some(self.engine.get_run(id)?) })
    }

    /// Run `id`, once `access` has the method's role on its repository.
    fn allowed<T>(&self, req: &Request<T>, id: &str) -> Result<(RunId, Access)> {
        let access = access::of(req)?.clone();
        let id = RunId::parse(id)?;
        access.target(format!("run {id}"));
        access.require(&self.engine.run_repo(id)?)?;
        Ok((id, access))
    }
}

fn priority(p: Option<u32>) -> Result<Option<u32>> {
    match p {
        Some(p) if p > 10 => Err(Error::invalid(format!("priority must be 0–10, got {p}"))),
        p => Ok(p),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;

/// The key a submit's `request_id` is remembered by: the caller's own (the
/// user a token acts for, else the service token), so one caller's key
/// never answers another's submit.
fn request_key(access: &access::Access, request_id: &str) -> Result<Option<[u8; 32]>, Status> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > 128 {
        return Err(Error::invalid("`request_id` is at most 128 bytes").into());
    }
    let caller =
        if access.owner.is_empty() { format!("token:{}", access.token_id) } else { format!("user:{}", access.owner) };
    let mut h = blake3::Hasher::new_derive_key("viaduct submit request id v1");
    h.update(caller.as_bytes()).update(&[0]).update(request_id.as_bytes());
    Ok(Some(*h.finalize().as_bytes()))
}

#[tonic::async_trait]
impl Runs for RunsApi {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        if r.keep_on_failure {
            // A held environment is for a debug shell: whoever may open one.
            access.require_role(viaduct_proto::v1::Role::Push, "")?;
        }
        let cause = Cause {
            source: RunSource { event: "api".into(), sender: access.actor.clone(), ..Default::default() },
            inputs: r.inputs.into_iter().collect(),
            priority: priority(r.priority)?,
            request_key: request_key(&access, &r.request_id)?,
            keep_on_failure: r.keep_on_failure,
            ..Default::default()
        };
        let origin = match r.source {
            Some(submit_request::Source::PipelineYaml(yaml)) => {
                let name = if r.file_name.is_empty() { "pipeline.yml".into() } else { r.file_name };
                Origin::File { name, yaml }
            }
            Some(submit_request::Source::Job(job)) => Origin::Inline(job),
            None => return Err(Error::invalid("set `pipeline_yaml` or `job`").into()),
        };
        let started = self.start(origin, cause).await?;
        access.target(format!("run {}", started.run_id));
        Ok(Response::new(started))
    }

    async fn trigger(&self, req: Request<TriggerRequest>) -> Result<Response<SubmitResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        if !r.repo.is_empty() {
            access.target(format!("repository `{}`", r.repo));
            access.require(&r.repo)?;
            let what = if r.commit.is_empty() { r.r#ref.as_str() } else { r.commit.as_str() };
            let id = self
                .triggers
                .run_by_hand(&r.repo, what, r.inputs.into_iter().collect(), priority(r.priority)?, &access.actor)
                .await?;
            return Ok(Response::new(SubmitResponse { run_id: id.to_string(), run: Some(self.engine.get_run(id)?) }));
        }
        if r.pipeline.is_empty() {
            return Err(Error::invalid("set `pipeline` (a stored pipeline) or `repo`").into());
        }
        access.target(format!("pipeline `{}`", r.pipeline));
        access.require("")?;
        let stored = crate::pipelines::load(&self.store, &r.pipeline)?;
        let cause = Cause {
            source: RunSource { event: "manual".into(), sender: access.actor.clone(), ..Default::default() },
            inputs: r.inputs.into_iter().collect(),
            priority: priority(r.priority)?,
            pipeline_ref: r.pipeline.clone(),
            ..Default::default()
        };
        let origin = Origin::File { name: format!("{}.yml", r.pipeline), yaml: stored.yaml };
        Ok(Response::new(self.start(origin, cause).await?))
    }

    async fn get(&self, req: Request<GetRunRequest>) -> Result<Response<Run>, Status> {
        let (id, _) = self.allowed(&req, &req.get_ref().id)?;
        Ok(Response::new(self.engine.get_run_durable_end(id).await?))
    }

    async fn list(&self, req: Request<ListRunsRequest>) -> Result<Response<ListRunsResponse>, Status> {
        let access = access::of(&req)?.clone();
        let mut r = req.into_inner();
        let visible = match access.repos() {
            Repos::All => None,
            Repos::Some(list) => {
                if !r.repo.is_empty() {
                    access.require(&r.repo)?;
                } else if let [only] = list.as_slice() {
                    // Through the repository index.
                    r.repo = only.clone();
                }
                Some(list)
            }
        };
        let statuses = r.statuses().collect();
        let page = r.page.unwrap_or_default();
        let q = RunQuery {
            statuses,
            pipeline: r.pipeline,
            repo: r.repo,
            branch: r.branch,
            page_size: page.page_size,
            page_token: page.page_token,
            visible,
        };
        let (runs, next_page_token) = self.engine.list_runs(&q)?;
        Ok(Response::new(ListRunsResponse { runs, next_page_token }))
    }

    async fn cancel(&self, req: Request<CancelRunRequest>) -> Result<Response<Run>, Status> {
        let (id, access) = self.allowed(&req, &req.get_ref().id)?;
        let r = req.into_inner();
        let why = format!("cancelled by {}", access.actor);
        if r.job_id.is_empty() {
            self.engine.cancel_run(id, &why).await?;
        } else {
            let job = JobKey::parse(&r.job_id)?;
            if job.run != id {
                return Err(Error::invalid(format!("job {} is not a job of run {id}", r.job_id)).into());
            }
            self.engine.cancel_job(job, &why).await?;
        }
        Ok(Response::new(self.engine.get_run(id)?))
    }

    async fn retry(&self, req: Request<RetryRunRequest>) -> Result<Response<Run>, Status> {
        let (id, access) = self.allowed(&req, &req.get_ref().id)?;
        if req.get_ref().keep_on_failure {
            // A held environment is for a debug shell: whoever may open one.
            access.require_role(viaduct_proto::v1::Role::Push, &self.engine.run_repo(id)?)?;
        }
        let from = req.get_ref().from.as_ref().map(|f| crate::engine::snapshots::ResumeFrom {
            job: (!f.job.trim().is_empty()).then(|| f.job.trim().to_string()),
            step: f.step,
        });
        self.engine.retry_run(id, from.as_ref(), req.get_ref().keep_on_failure).await?;
        Ok(Response::new(self.engine.get_run(id)?))
    }

    async fn approve(&self, req: Request<ApproveRunRequest>) -> Result<Response<Run>, Status> {
        let (id, access) = self.allowed(&req, &req.get_ref().id)?;
        self.engine.approve_run(id, &access.actor).await?;
        Ok(Response::new(self.engine.get_run(id)?))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        let run = if r.run_id.is_empty() { None } else { Some(RunId::parse(&r.run_id)?) };
        if let Some(id) = run {
            access.require(&self.engine.run_repo(id)?)?;
        }
        // Watching every run: only the events of runs the caller may read.
        let visible = access.repos();
        let mut cursor = r.after_cursor;
        if cursor == 0 && !r.from_start {
            cursor = *self.engine.signals().events.borrow();
        }
        let (tx, rx) = mpsc::channel(256);
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut changes = engine.signals().events.subscribe();
            loop {
                changes.borrow_and_update();
                let (events, scanned) = match engine.events_after(cursor, run, 1000) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                // Only durable events go out: a cursor a client has seen must
                // never be reused after a crash (one shared fsync covers it).
                engine.wait_events_durable(&events).await;
                for ev in events.into_iter().filter(|ev| seen.shows(&engine, &visible, &ev.run_id)) {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                if scanned != cursor {
                    cursor = scanned;
                    continue;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Which runs' events a watcher of every run may see, remembered per run.
#[derive(Default)]
struct Seen(std::collections::HashMap<String, bool>);

impl Seen {
    fn shows(&mut self, engine: &Engine, visible: &Repos, run: &str) -> bool {
        if matches!(visible, Repos::All) {
            return true;
        }
        if self.0.len() > 100_000 {
            self.0.clear();
        }
        *self.0.entry(run.to_string()).or_insert_with(|| {
            RunId::parse(run).and_then(|id| engine.run_repo(id)).is_ok_and(|repo| visible.contains(&repo))
        })
    }
}
