//! A follower's front: every request goes to the leader as it came —
//! HTTP/2 to the leader, bodies streamed both ways, trailers (gRPC's
//! status) kept — so any replica serves every client and runner. The
//! leader authenticates and authorizes; the follower only adds
//! `X-Forwarded-For` and the signed client address (`client_ip`). With no leader to reach (a failover under way), a
//! call gets `UNAVAILABLE` (gRPC) or 503, which clients retry.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, Uri, Version, header};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};

use crate::store::Leadership;

/// Forwards to whoever leads.
pub struct Forwarder {
    role: tokio::sync::watch::Receiver<Leadership>,
    /// Signs the client's address for the leader (see `client_ip`).
    key: [u8; 32],
    /// The leader last named.
    last: std::sync::Mutex<Option<String>>,
    /// This replica's own URL: never forwarded to (a leader that was
    /// restarted on this address, a lease not yet expired).
    own: String,
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>,
    /// The leader URL last found accepting connections.
    reachable: std::sync::Mutex<Option<String>>,
}

/// How long a request waits for a new leader to accept connections (it
/// takes the lease a moment before it listens).
const LEADER_STARTUP: std::time::Duration = std::time::Duration::from_secs(10);

impl Forwarder {
    /// A forwarder to the leader `role` names (as the lease thread sees
    /// it): over HTTPS, verified with `tls`, when its URL is `https://`.
    pub fn new(
        role: tokio::sync::watch::Receiver<Leadership>,
        key: [u8; 32],
        own: String,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        http.enforce_http(false);
        let http = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_initial_stream_window_size(2 << 20)
            .http2_initial_connection_window_size(8 << 20)
            .http2_keep_alive_interval(std::time::Duration::from_secs(20))
            .build(http);
        Self { role, key, last: std::sync::Mutex::new(None), own, client, reachable: std::sync::Mutex::default() }
    }

    /// The leader's URL, as the lease last named one: a moment without an
    /// answer from the database (or a lease expiring between two looks)
    /// does not stop forwarding; a leader that is gone fails the request.
    fn leader(&self) -> Option<String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Leadership::Follower { leader: Some(url) } = &*self.role.borrow() {
            *last = Some(url.clone());
        }
        last.clone().filter(|url| *url != self.own)
    }

    /// The leader, once it accepts connections: a leader that just took
    /// the lease may not listen yet, and a request sent then would fail
    /// (its body cannot be sent twice). A leader URL not yet seen to accept
    /// is probed with a TCP connect by each request that needs it — no lock
    /// is held across the probe — for up to [`LEADER_STARTUP`]; what was
    /// seen is forgotten when the leader changes.
    async fn reachable_leader(&self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + LEADER_STARTUP;
        loop {
            let leader = self.leader()?;
            if self.reachable.lock().unwrap_or_else(|p| p.into_inner()).as_deref() == Some(leader.as_str()) {
                return Some(leader);
            }
            let authority = leader.parse::<Uri>().ok().and_then(|u| {
                let default = if u.scheme_str() == Some("https") { 443 } else { 80 };
                let a = u.authority()?;
                Some(format!("{}:{}", a.host(), a.port_u16().unwrap_or(default)))
            })?;
            let probe =
                tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(&authority))
                    .await;
            if matches!(probe, Ok(Ok(_))) {
                *self.reachable.lock().unwrap_or_else(|p| p.into_inner()) = Some(leader.clone());
                return Some(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                // Sent anyway: it fails with a clear answer.
                return Some(leader);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Forgets which leader was seen to accept connections (it changed).
    fn leader_changed(&self) {
        *self.reachable.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Serves the forwarder on `listener` until this replica leads (or the
/// task is aborted). Connections are its own tasks, all dropped when the
/// leader changes — a stream forwarded to a leader that is gone (or only
/// paused) would otherwise hang until keep-alives give up — so clients and
/// runners reconnect at once, to the new leader.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    forwarder: Arc<Forwarder>,
    mut role: tokio::sync::watch::Receiver<Leadership>,
) {
    use tower::ServiceExt;
    let app = axum::Router::new().fallback(forward).with_state(Arc::clone(&forwarder));
    let mut connections = tokio::task::JoinSet::new();
    let mut leader = forwarder.leader();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (app, tls) = (app.clone(), tls.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        app.clone().oneshot(req.map(Body::new))
                    });
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(tls) => {
                            let Some(stream) = tls.handshake(stream, peer).await else { return };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
            changed = role.changed() => {
                if changed.is_err() || matches!(*role.borrow(), Leadership::Leader(_)) {
                    break;
                }
                forwarder.leader_changed();
                let now = forwarder.leader();
                if leader.is_some() && now != leader {
                    tracing::info!(count = connections.len(), "the leader changed: dropping the connections forwarded to the old one");
                    connections.abort_all();
                }
                leader = now;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

/// Headers that belong to one hop, not to the request.
const HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "proxy-authorization"];

async fn forward(
    State(f): State<Arc<Forwarder>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let Some(leader) = f.reachable_leader().await else {
        return unavailable(grpc, "no replica leads right now (a failover is under way): retry");
    };
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{}{path}", leader.trim_end_matches('/')).parse::<Uri>() {
        Ok(u) => u,
        Err(e) => return unavailable(grpc, &format!("the leader's URL `{leader}` is not usable: {e}")),
    };
    parts.version = Version::HTTP_2;
    for h in HOP {
        parts.headers.remove(*h);
    }
    if parts.headers.get(header::TE).is_some_and(|v| v != "trailers") {
        parts.headers.remove(header::TE);
    }
    let forwarded = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert("x-forwarded-for", v);
    }
    // Only this follower's word counts (a client's own is replaced).
    if let Ok(v) = HeaderValue::from_str(&super::client_ip::sign(&f.key, peer.ip())) {
        parts.headers.insert(super::client_ip::HEADER, v);
    }
    match f.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => {
            tracing::warn!(error = %crate::error::with_causes(&e), %leader, "cannot reach the leader");
            unavailable(grpc, "the leading replica cannot be reached (a failover may be under way): retry")
        }
    }
}

/// `UNAVAILABLE` for gRPC (trailers-only), 503 for anything else.
fn unavailable(grpc: bool, why: &str) -> Response {
    if grpc {
        let mut r = Response::new(Body::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        if let Ok(v) = HeaderValue::from_str(why) {
            h.insert("grpc-message", v);
        }
        return r;
    }
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("{why}\n")).into_response()
}
