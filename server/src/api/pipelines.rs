//! `viaduct.v1.Pipelines`: stored pipeline definitions and validation.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use viaduct_proto::v1::{
    CreatePipelineRequest, DeletePipelineResponse, GetPipelineRequest, ListPipelinesRequest, ListPipelinesResponse,
    Pipeline, SchemaRequest, SchemaResponse, ValidateRequest, ValidateResponse, pipelines_server::Pipelines,
};

use crate::{
    convert,
    error::{Error, Result},
    launch::MAX_PIPELINE_BYTES,
    launch::resolve,
    pipelines::{self, Save},
    store::{Store, records::PipelineRecord},
    triggers::Triggers,
};

/// The Pipelines service.
pub struct PipelinesApi {
    store: Arc<Store>,
    triggers: Arc<Triggers>,
}

impl PipelinesApi {
    /// The service over `engine`; schedules of stored pipelines go to
    /// `triggers`.
    pub fn new(store: Arc<Store>, triggers: Arc<Triggers>) -> Self {
        Self { store, triggers }
    }

    async fn save(&self, r: CreatePipelineRequest, how: Save) -> Result<Pipeline> {
        let rec = pipelines::save(&self.store, self.triggers.plugins(), &r.name, r.yaml, r.retention, how).await?;
        self.triggers.refresh_pipeline_schedules(&r.name, Some(&rec.yaml));
        Ok(to_proto(&r.name, &rec))
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
        retention: r.retention,
    }
}

#[tonic::async_trait]
impl Pipelines for PipelinesApi {
    async fn validate(&self, req: Request<ValidateRequest>) -> Result<Response<ValidateResponse>, Status> {
        let r = req.into_inner();
        if r.yaml.len() > MAX_PIPELINE_BYTES {
            return Err(Error::TooLarge(format!("pipeline file is over {MAX_PIPELINE_BYTES} bytes")).into());
        }
        let file = if r.file_name.is_empty() { "pipeline.yml" } else { r.file_name.as_str() };
        let errors = resolve::validate(file, &r.yaml, self.triggers.plugins())?;
        Ok(Response::new(ValidateResponse { valid: errors.is_empty(), errors }))
    }

    async fn create(&self, req: Request<CreatePipelineRequest>) -> Result<Response<Pipeline>, Status> {
        Ok(Response::new(self.save(req.into_inner(), Save::Create).await?))
    }

    async fn update(&self, req: Request<CreatePipelineRequest>) -> Result<Response<Pipeline>, Status> {
        Ok(Response::new(self.save(req.into_inner(), Save::Replace).await?))
    }

    async fn get(&self, req: Request<GetPipelineRequest>) -> Result<Response<Pipeline>, Status> {
        let name = req.into_inner().name;
        Ok(Response::new(to_proto(&name, &pipelines::load(&self.store, &name)?)))
    }

    async fn list(&self, req: Request<ListPipelinesRequest>) -> Result<Response<ListPipelinesResponse>, Status> {
        let page = req.into_inner().page.unwrap_or_default();
        let size = match page.page_size {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let (found, next) = pipelines::list(&self.store, &page.page_token, size)?;
        let pipelines = found.iter().map(|(name, rec)| to_proto(name, rec)).collect();
        let next_page_token = next.unwrap_or_default();
        Ok(Response::new(ListPipelinesResponse { pipelines, next_page_token }))
    }

    async fn delete(&self, req: Request<GetPipelineRequest>) -> Result<Response<DeletePipelineResponse>, Status> {
        let name = req.into_inner().name;
        pipelines::delete(&self.store, &name).await?;
        self.triggers.refresh_pipeline_schedules(&name, None);
        Ok(Response::new(DeletePipelineResponse {}))
    }

    async fn schema(&self, _req: Request<SchemaRequest>) -> Result<Response<SchemaResponse>, Status> {
        Ok(Response::new(SchemaResponse { json_schema: resolve::json_schema() }))
    }
}
