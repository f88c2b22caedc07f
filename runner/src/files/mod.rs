//! Files between a job's workspace and the server: artifacts and caches.
//!
//! Every transfer is on behalf of a job attempt the runner holds (the
//! server checks the lease and picks scopes itself) and streams in chunks:
//! no file or archive is ever held whole in memory. Paths from pipelines
//! and plugins are resolved by [`paths`] and never leave the workspace.

pub mod artifacts;
pub mod cache;
pub mod copy;
pub mod paths;
pub mod snapshots;
pub mod unpack;

use std::path::Path;

use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use viaduct_proto::v1::{Artifact, JobRef, UploadArtifactRequest};

/// Bytes per uploaded chunk.
pub const CHUNK: usize = 256 * 1024;

/// Transfers for jobs, through one client of the runner.
pub struct Files {
    client: viaduct_sdk::Client,
}

/// A status from the server as a one-line error.
fn status(what: &str, s: &tonic::Status) -> String {
    format!("{what}: {}", viaduct_sdk::status_line(s))
}

impl Files {
    /// Transfers through `client` (authenticated with the runner token).
    pub fn new(client: viaduct_sdk::Client) -> Self {
        Self { client }
    }

    /// The client transfers go through (the runner's token).
    pub fn client(&self) -> &viaduct_sdk::Client {
        &self.client
    }

    /// Uploads the file at `path` as artifact `name` of `job`.
    pub async fn upload_file(&self, job: &JobRef, path: &Path, name: &str) -> Result<Artifact, String> {
        use std::os::unix::fs::PermissionsExt;
        let mut file = tokio::fs::File::open(path).await.map_err(|e| format!("cannot open {name}: {e}"))?;
        let meta = file.metadata().await.map_err(|e| format!("cannot stat {name}: {e}"))?;
        let (tx, rx) = mpsc::channel::<UploadArtifactRequest>(4);
        let header = UploadArtifactRequest {
            job: Some(job.clone()),
            name: name.to_string(),
            mode: meta.permissions().mode() & 0o777,
            size: meta.len(),
            data: Vec::new(),
        };
        let what = name.to_string();
        let reader = tokio::spawn(async move {
            if tx.send(header).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = file.read(&mut buf).await.map_err(|e| format!("cannot read {what}: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.send(UploadArtifactRequest { data: buf, ..Default::default() }).await.is_err() {
                    return Ok(());
                }
            }
        });
        let sent = self.client.agent().upload_artifact(ReceiverStream::new(rx)).await;
        let read: Result<(), String> = reader.await.map_err(|e| format!("upload task failed: {e}"))?;
        read?;
        Ok(sent.map_err(|s| status(&format!("uploading {name}"), &s))?.into_inner())
    }
}

/// A blocking writer that sends what it is given, in chunks, to an async
/// consumer (archives built on a blocking thread, uploaded by a task).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self { tx, buf: Vec::with_capacity(CHUNK) }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| std::io::Error::other("the upload was cancelled"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() { Ok(()) } else { self.send() }
    }
}
