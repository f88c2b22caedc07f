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
                        let mut start = Vec::new();
                        let read = tokio::time::timeout(FIRST_BYTES, read_start(&mut io_ref(io), &mut start));
                        // (`io_ref` keeps ownership simple: see below.)
                        let (io, upgrade) = match read.await {
                            Ok((io, Ok(upgrade))) => (io, upgrade),
                            // Closed or broken before a request.
                            Ok((_, Err(_))) => return,
                            Err(_) => return,
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
