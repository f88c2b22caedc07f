//! Moving blobs over gRPC: files out as server streams of chunks, client
//! streams in through a [`BlobWriter`] — never a whole file in memory.

use std::pin::Pin;

use futures_util::Stream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use crate::{
    blobs::{Blob, BlobWriter},
    error::{Error, Result},
};

/// Bytes per chunk on download streams.
pub const CHUNK: usize = 256 * 1024;

/// A boxed stream of messages, as tonic's server streams want them.
pub type Chunks<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// `file` (a file, a blob) as a stream of messages built by `make(data, first)`.
pub fn file_stream<M, F>(file: impl tokio::io::AsyncRead + Send + 'static, mut make: F) -> Chunks<M>
where
    M: Send + 'static,
    F: FnMut(Vec<u8>, bool) -> M + Send + 'static,
{
    let mut first = true;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
        chunk
            .map(|data| make(data.to_vec(), std::mem::take(&mut first)))
            .map_err(|e| Status::internal(format!("reading a stored file: {e}")))
    });
    Box::pin(stream)
}

/// Writes `first` and then the data of every further message of `rest`
/// (taken by `data_of`) into `writer`, and stores the blob.
pub async fn receive<M>(
    mut writer: BlobWriter,
    first: Vec<u8>,
    rest: &mut Streaming<M>,
    data_of: impl Fn(M) -> Vec<u8>,
) -> Result<Blob> {
    writer.write(&first).await?;
    loop {
        match rest.message().await {
            Ok(Some(m)) => writer.write(&data_of(m)).await?,
            Ok(None) => break,
            Err(e) => return Err(Error::invalid(format!("upload interrupted: {}", e.message()))),
        }
    }
    writer.finish().await
}
