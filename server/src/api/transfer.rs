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

/// The artifacts `list` names, read from `blobs`, as one tar stream (each
/// entry named by the artifact's name, with its mode), in messages built by
/// `make`. A blob that cannot be read ends the stream with an error.
pub fn artifacts_tar<M, F>(
    blobs: std::sync::Arc<crate::blobs::BlobStore>,
    list: Vec<viaduct_proto::v1::Artifact>,
    make: F,
) -> Chunks<M>
where
    M: Send + 'static,
    F: Fn(Vec<u8>) -> M + Send + Sync + 'static,
{
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<M, Status>>(4);
    tokio::spawn(async move {
        let send = |data: Vec<u8>| {
            let tx = tx.clone();
            let msg = make(data);
            async move { tx.send(Ok(msg)).await.is_ok() }
        };
        for a in list {
            let mtime = a.created_at.as_ref().map_or(0, |t| u64::try_from(t.seconds).unwrap_or(0));
            let header = match tar_header(&a.name, a.size, a.mode, mtime) {
                Ok(h) => h,
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e))).await;
                    return;
                }
            };
            if !send(header).await {
                return;
            }
            let mut file = match blobs.open_read(&a.digest).await {
                Ok((file, _)) => file,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            let mut left = a.size;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
                match file.read(&mut buf).await {
                    Ok(0) => {
                        let why = format!("artifact `{}` is shorter than recorded", a.name);
                        let _ = tx.send(Err(Status::data_loss(why))).await;
                        return;
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        if !send(buf).await {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("reading artifact `{}`: {e}", a.name)))).await;
                        return;
                    }
                }
            }
            let pad = (512 - (a.size % 512) as usize) % 512;
            if pad > 0 && !send(vec![0u8; pad]).await {
                return;
            }
        }
        send(vec![0u8; 1024]).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The tar header blocks of a regular file `name` of `size` bytes: a GNU
/// long-name entry first when the name is longer than a header holds (100
/// bytes; artifact names may be 1024).
fn tar_header(name: &str, size: u64, mode: u32, mtime: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(1024);
    let mut header = tar::Header::new_gnu();
    if name.len() > 100 {
        let mut long = tar::Header::new_gnu();
        let gnu = long.as_gnu_mut().ok_or("a GNU header")?;
        gnu.name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().div_ceil(512) * 512, 0);
        let gnu = header.as_gnu_mut().ok_or("a GNU header")?;
        gnu.name.copy_from_slice(&name.as_bytes()[..100]);
    } else {
        header.set_path(name).map_err(|e| format!("artifact `{name}`: {e}"))?;
    }
    header.set_size(size);
    header.set_mode(if mode == 0 { 0o644 } else { mode & 0o7777 });
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    #[test]
    fn long_artifact_names_survive_the_tar_stream() {
        let long = format!("dist/{}/app.js", "a".repeat(180));
        let mut tar = Vec::new();
        for (name, data) in [("short.txt", &b"one"[..]), (long.as_str(), &b"two!"[..])] {
            tar.extend(super::tar_header(name, data.len() as u64, 0o755, 1_700_000_000).unwrap());
            tar.extend_from_slice(data);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.extend([0u8; 1024]);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            seen.push((e.path().unwrap().display().to_string(), body, e.header().mode().unwrap()));
        }
        assert_eq!(seen, [("short.txt".into(), "one".into(), 0o755), (long, "two!".into(), 0o755)]);
    }
}
