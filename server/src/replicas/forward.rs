//! A follower's front: every request goes to the leader as it came —
//! HTTP/2 to the leader, bodies streamed both ways, trailers (gRPC's
//! status) kept — so any replica serves every client and runner. The
//! leader authenticates and authorizes; the follower only adds
//! `X-Forwarded-For`. With no leader to reach (a failover under way), a
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
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
}

impl Forwarder {
    /// A forwarder to the leader `role` names (as the lease thread sees it).
    pub fn new(role: tokio::sync::watch::Receiver<Leadership>) -> Self {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_initial_stream_window_size(2 << 20)
            .http2_initial_connection_window_size(8 << 20)
            .http2_keep_alive_interval(std::time::Duration::from_secs(20))
            .build(http);
        Self { role, client }
    }

    fn leader(&self) -> Option<String> {
        match &*self.role.borrow() {
            Leadership::Follower { leader: Some(url) } => Some(url.clone()),
            _ => None,
        }
    }
}

/// Serves the forwarder on `listener` until aborted.
pub async fn serve(listener: tokio::net::TcpListener, forwarder: Arc<Forwarder>) {
    let app = axum::Router::new().fallback(forward).with_state(forwarder);
    if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
        tracing::error!(error = %e, "the replica's forwarder stopped");
    }
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
    let Some(leader) = f.leader() else {
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
    match f.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => {
            tracing::warn!(error = %e, %leader, "cannot reach the leader");
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
