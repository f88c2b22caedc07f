//! `viaduct.v1.Plugins`: publishing, listing and fetching step plugins.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};
use viaduct_proto::v1::{
    FetchPluginRequest, GetPluginRequest, ListPluginsRequest, ListPluginsResponse, Plugin, PluginChunk,
    PublishPluginRequest, plugins_server::Plugins, publish_plugin_request::Part,
};

use super::transfer::{self, Chunks};
use crate::{
    depot::Depot,
    error::Error,
    plugins::{MAX_COMPONENT_BYTES, PluginRegistry},
};

/// The Plugins service.
pub struct PluginsApi {
    depot: Arc<Depot>,
}

impl PluginsApi {
    /// The service over `depot`'s registry.
    pub fn new(depot: Arc<Depot>) -> Self {
        Self { depot }
    }
}

#[tonic::async_trait]
impl Plugins for PluginsApi {
    async fn publish(&self, req: Request<Streaming<PublishPluginRequest>>) -> Result<Response<Plugin>, Status> {
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Error::invalid("empty upload"))?;
        let (Some(Part::ManifestToml(manifest)), replace) = (first.part, first.replace) else {
            return Err(Error::invalid("the first message must carry the manifest (manifest_toml)").into());
        };
        // Refuse a bad manifest before reading megabytes of component.
        PluginRegistry::parse_manifest("plugin.toml", &manifest)?;
        let writer = self.depot.blobs.writer(MAX_COMPONENT_BYTES).await?;
        let blob = transfer::receive(writer, Vec::new(), &mut stream, |m| match m.part {
            Some(Part::Data(d)) => d,
            _ => Vec::new(),
        })
        .await?;
        if blob.size == 0 {
            return Err(Error::invalid("no component bytes after the manifest").into());
        }
        let plugin = self.depot.plugins.publish("plugin.toml", &manifest, &blob, replace).await?;
        Ok(Response::new(plugin))
    }

    async fn list(&self, req: Request<ListPluginsRequest>) -> Result<Response<ListPluginsResponse>, Status> {
        let plugins = self.depot.plugins.list(&req.into_inner().name)?;
        Ok(Response::new(ListPluginsResponse { plugins }))
    }

    async fn get(&self, req: Request<GetPluginRequest>) -> Result<Response<Plugin>, Status> {
        Ok(Response::new(self.depot.plugins.get(&req.into_inner().reference)?))
    }

    type FetchStream = Chunks<PluginChunk>;

    async fn fetch(&self, req: Request<FetchPluginRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let digest = req.into_inner().digest;
        crate::blobs::parse_digest(&digest)?;
        if !self.depot.plugins.is_published(&digest)? {
            return Err(Error::not_found(format!("no plugin component {digest} was published")).into());
        }
        let (file, total) = self.depot.blobs.open_read(&digest).await?;
        let stream = transfer::file_stream(file, move |data, first| PluginChunk {
            data,
            total_size: if first { total } else { 0 },
        });
        Ok(Response::new(stream))
    }
}
