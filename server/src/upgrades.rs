//! HTTP/1.1 upgrades on the shared port: the debug shell's WebSocket
//! (`crate::debug_socket`).
//!
//! tonic's server serves each connection without hyper's upgrade support,
//! so a WebSocket handshake it answered would never reach its handler. The
//! first bytes of every connection are read here first: one whose first
//! request is `GET /debug/shell` (a browser opens each WebSocket on a
//! connection of its own) is served here, HTTP/1.1 with upgrades, by the
//! same routes; every other connection goes on to tonic unchanged, those
//! bytes replayed ([`Rewind`]), with the same connection info.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tower::ServiceExt as _;

/// Request lines served here (the path, then its query or its end).
const DIVERTED: [&[u8]; 2] = [b"GET /debug/shell?", b"GET /debug/shell "];

/// How long a connection may stay silent before it goes on to tonic as it
/// is (which has its own limits).
const FIRST_BYTES: Duration = Duration::from_secs(30);

/// Whether a connection that began with `start` is to be served here:
/// `None` until that can be told.
fn diverted(start: &[u8]) -> Option<bool> {
    if DIVERTED.iter().any(|p| start.starts_with(p)) {
        return Some(true);
    }
    let could = DIVERTED.iter().any(|p| p.starts_with(&start[..start.len().min(p.len())]));
    if could { None } else { Some(false) }
}

/// The connections of `incoming` that tonic is to serve; the others are
/// served here with `app`, each until `stopping` turns true.
pub fn divert<IO, IE>(
    incoming: impl Stream<Item = Result<IO, IE>> + Send + 'static,
    app: axum::Router,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Rewind<IO>, IE>>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut stop = stopping.clone();
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = incoming.next() => next,
                _ = stop.wait_for(|s| *s) => return,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(io)) => {
                    let (tx, app, stopping) = (tx.clone(), app.clone(), stopping.clone());
                    tokio::spawn(async move {
                        let mut io = io;
                        let mut start = Vec::new();
                        let upgrade = match tokio::time::timeout(FIRST_BYTES, read_start(&mut io, &mut start)).await {
                            Ok(Ok(upgrade)) => upgrade,
                            // Closed or broken before a whole request line.
                            Ok(Err(_)) => return,
                            Err(_) => false,
                        };
                        let io = Rewind { start, at: 0, inner: io };
                        if upgrade {
                            serve(io, app, stopping).await;
                        } else {
                            let _ = tx.send(Ok(io)).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Reads the start of a connection into `start` until it tells whether the
/// connection is to be served here.
async fn read_start<IO: AsyncRead + Unpin>(io: &mut IO, start: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 512];
    loop {
        if let Some(here) = diverted(start) {
            return Ok(here);
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        start.extend_from_slice(&buf[..n]);
    }
}

/// Serves one connection with `app`, HTTP/1.1 with upgrades, until it
/// closes (an upgraded socket lives on in its handler's task) or the
/// server stops.
async fn serve<IO>(io: Rewind<IO>, app: axum::Router, mut stopping: tokio::sync::watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    // The peer, as tonic gives it to every request (the gate reads it).
    let info = io.connect_info();
    let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = stopping.wait_for(|s| *s), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// A connection whose first bytes were read already: they are read again
/// first.
pub struct Rewind<IO> {
    start: Vec<u8>,
    at: usize,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.start.len() {
            let n = (this.start.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.start[this.at..this.at + n]);
            this.at += n;
            if this.at == this.start.len() {
                this.start = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Rewind<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_debug_shell_request_line_is_served_here() {
        assert_eq!(diverted(b""), None);
        assert_eq!(diverted(b"GET /deb"), None);
        assert_eq!(diverted(b"GET /debug/shell?job=1.1 HTTP/1.1\r\n"), Some(true));
        assert_eq!(diverted(b"GET /debug/shell HTTP/1.1\r\n"), Some(true));
        assert_eq!(diverted(b"GET /debug/shells"), Some(false));
        assert_eq!(diverted(b"PRI * HTTP/2.0\r\n"), Some(false));
        assert_eq!(diverted(b"POST /viaduct.v1.Runs/Get"), Some(false));
        assert_eq!(diverted(b"GET /runs"), Some(false));
    }

    #[tokio::test]
    async fn the_bytes_read_first_are_read_again() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world").await.unwrap();
        drop(a);
        let mut r = Rewind { start: b"hello".to_vec(), at: 0, inner: b };
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
