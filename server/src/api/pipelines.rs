//! `viaduct.v1.Pipelines`: stored pipeline definitions and validation.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CreatePipelineRequest, DeletePipelineResponse, GetPipelineRequest, ListPipelinesRequest, ListPipelinesResponse,
    Pipeline, SchemaRequest, SchemaResponse, ValidateRequest, ValidateResponse, pipelines_server::Pipelines,
};

use super::runs::MAX_PIPELINE_BYTES;
use crate::{
    convert,
    engine::Engine,
    error::{Error, Result},
    planning,
    store::{
        T, WriteSet, decode, now_ms,
        records::{PipelineRecord, SCHEMA_VERSION},
    },
    triggers::Triggers,
};

/// The Pipelines service.
pub struct PipelinesApi {
    engine: Arc<Engine>,
    triggers: Arc<Triggers>,
}

impl PipelinesApi {
    /// The service over `engine`; schedules of stored pipelines go to
    /// `triggers`.
    pub fn new(engine: Arc<Engine>, triggers: Arc<Triggers>) -> Self {
        Self { engine, triggers }
    }

    async fn save(&self, r: CreatePipelineRequest, create: bool) -> Result<Pipeline> {
        check_name(&r.name)?;
        if r.yaml.len() > MAX_PIPELINE_BYTES {
            return Err(Error::TooLarge(format!("pipeline file is over {MAX_PIPELINE_BYTES} bytes")));
        }
        let jobs = planning::check(&format!("{}.yml", r.name), &r.yaml, self.triggers.plugins())?;
        let store = self.engine.store();
        let existing: Option<PipelineRecord> = store.get(T::Pipelines, r.name.as_bytes())?;
        let now = now_ms();
        let rec = match (existing, create) {
            (Some(_), true) => {
                return Err(Error::AlreadyExists(format!("pipeline `{}` already exists; use Update", r.name)));
            }
            (None, false) => return Err(Error::not_found(format!("pipeline `{}` not found; use Create", r.name))),
            (Some(old), false) => PipelineRecord { yaml: r.yaml, updated_ms: now, jobs, ..old },
            (None, true) => {
                PipelineRecord { schema: SCHEMA_VERSION, yaml: r.yaml, created_ms: now, updated_ms: now, jobs }
            }
        };
        let mut ws = WriteSet::default();
        ws.put(T::Pipelines, r.name.as_bytes(), &rec);
        store.commit_durable(&ws).await?;
        self.triggers.refresh_pipeline_schedules(&r.name, Some(&rec.yaml));
        Ok(to_proto(&r.name, &rec))
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("invalid pipeline name `{name}`: use 1–100 of A–Z a–z 0–9 - _ .")))
    }
}

fn to_proto(name: &str, r: &PipelineRecord) -> Pipeline {
    Pipeline {
        name: name.to_string(),
        yaml: r.yaml.clone(),
        times: Some(viaduct_proto::v1::Times {
            created_at: convert::timestamp(r.created_ms),
            started_at: None,
            finished_at: convert::timestamp(r.updated_ms),
        }),
        jobs: r.jobs.clone(),
    }
}

/// A stored pipeline by name.
pub fn load(engine: &Engine, name: &str) -> Result<PipelineRecord> {
    engine
        .store()
        .get(T::Pipelines, name.as_bytes())?
        .ok_or_else(|| Error::not_found(format!("pipeline `{name}` not found")))
}

#[tonic::async_trait]
impl Pipelines for PipelinesApi {
    async fn validate(&self, req: Request<ValidateRequest>) -> Result<Response<ValidateResponse>, Status> {
        let r = req.into_inner();
        if r.yaml.len() > MAX_PIPELINE_BYTES {
            return Err(Error::TooLarge(format!("pipeline file is over {MAX_PIPELINE_BYTES} bytes")).into());
        }
        let file = if r.file_name.is_empty() { "pipeline.yml" } else { r.file_name.as_str() };
        let errors = planning::validate(file, &r.yaml, self.triggers.plugins())?;
        Ok(Response::new(ValidateResponse { valid: errors.is_empty(), errors }))
    }

    async fn create(&self, req: Request<CreatePipelineRequest>) -> Result<Response<Pipeline>, Status> {
        Ok(Response::new(self.save(req.into_inner(), true).await?))
    }

    async fn update(&self, req: Request<CreatePipelineRequest>) -> Result<Response<Pipeline>, Status> {
        Ok(Response::new(self.save(req.into_inner(), false).await?))
    }

    async fn get(&self, req: Request<GetPipelineRequest>) -> Result<Response<Pipeline>, Status> {
        let name = req.into_inner().name;
        Ok(Response::new(to_proto(&name, &load(&self.engine, &name)?)))
    }

    async fn list(&self, req: Request<ListPipelinesRequest>) -> Result<Response<ListPipelinesResponse>, Status> {
        let page = req.into_inner().page.unwrap_or_default();
        let size = match page.page_size {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let tree = self.engine.store().tree(T::Pipelines);
        let start = page.page_token.into_bytes();
        let mut pipelines = Vec::new();
        let mut next_page_token = String::new();
        for kv in tree.range(start.clone()..) {
            let (k, v) = kv?;
            if k == start {
                continue;
            }
            let name = String::from_utf8_lossy(&k).into_owned();
            if pipelines.len() == size {
                next_page_token = pipelines.last().map(|p: &Pipeline| p.name.clone()).unwrap_or_default();
                break;
            }
            pipelines.push(to_proto(&name, &decode(T::Pipelines, &v)?));
        }
        Ok(Response::new(ListPipelinesResponse { pipelines, next_page_token }))
    }

    async fn delete(&self, req: Request<GetPipelineRequest>) -> Result<Response<DeletePipelineResponse>, Status> {
        let name = req.into_inner().name;
        load(&self.engine, &name)?;
        let mut ws = WriteSet::default();
        ws.delete(T::Pipelines, name.as_bytes());
        self.engine.store().commit_durable(&ws).await?;
        self.triggers.refresh_pipeline_schedules(&name, None);
        Ok(Response::new(DeletePipelineResponse {}))
    }

    async fn schema(&self, _req: Request<SchemaRequest>) -> Result<Response<SchemaResponse>, Status> {
        Ok(Response::new(SchemaResponse { json_schema: planning::json_schema() }))
    }
}
