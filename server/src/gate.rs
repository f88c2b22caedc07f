//! The one place every call is let in or not: gRPC calls through
//! [`check`], HTTP routes (git, metrics) through [`Gate::authenticate`].
//!
//! For each call: look up what the method needs in [`access::TABLE`]
//! (a method missing there is refused), refuse a client over its quota of
//! failed authentications, authenticate the bearer token (or the web UI's
//! session cookie), check the role and where it applies, count the call
//! against the token's rate limit, hand the handler an [`Access`] to
//! narrow repository-scoped calls with, write privileged calls to the
//! audit log with their outcome, and end the response — also a stream
//! open for hours — with `UNAUTHENTICATED` as soon as its token is revoked.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::{Stream, StreamExt as _};
use http_body::Frame;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::{
    access::{self, Access, Need, Scope},
    audit::{Action, AuditLog},
    auth::{Auth, Caller, Principal},
    error::Error,
    throttle::Throttle,
};

/// What the gate needs.
pub struct Gate {
    /// Token checks.
    pub auth: Arc<Auth>,
    /// Where privileged calls are written.
    pub audit: Arc<AuditLog>,
    /// Abuse limits.
    pub throttle: Arc<Throttle>,
}

/// The peer address of a request (TCP, or TCP under TLS).
pub fn peer_of<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|c| c.get_ref().remote_addr()))
}

/// The peer's IP address.
pub fn peer_ip<B>(req: &http::Request<B>) -> Option<IpAddr> {
    peer_of(req).map(|a| a.ip())
}

/// Whether calls of `path` are written to the audit log: everything that
/// changes something (`trigger` and up), tokens and registrations.
pub fn audited(path: &str, need: Need) -> bool {
    let changes = matches!(need.scope, Scope::Global | Scope::Repo)
        && need.role as i32 >= viaduct_proto::v1::Role::Trigger as i32;
    changes
        || matches!(
            path,
            "/viaduct.v1.Tokens/Create"
                | "/viaduct.v1.Tokens/Revoke"
                | "/viaduct.v1.Tokens/Rotate"
                | "/viaduct.v1.RunnerAgent/Register"
        )
}

/// A refusal on an HTTP route (git's client asks for credentials after a
/// 401; 429 says when to try again).
pub fn http_refusal(e: &Error) -> Response {
    let mut r = http_error(e);
    if matches!(e, Error::Unauthenticated(_)) {
        r.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Basic realm=\"viaduct\""));
    }
    r
}

/// A refusal as a plain-text HTTP response: its status, its message, and
/// `Retry-After` when rate-limited.
pub fn http_error(e: &Error) -> Response {
    let status = match e {
        Error::Unauthenticated(_) => http::StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => http::StatusCode::FORBIDDEN,
        Error::RateLimited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
        Error::NotFound(_) => http::StatusCode::NOT_FOUND,
        Error::Invalid(_) | Error::InvalidFile(_) => http::StatusCode::BAD_REQUEST,
        Error::TooLarge(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
        Error::AlreadyExists(_) => http::StatusCode::CONFLICT,
        Error::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        _ => http::StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut r = (status, format!("{e}\n")).into_response();
    if let Error::RateLimited { retry_after, .. } = e
        && let Ok(v) = http::HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
    {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

fn refuse(e: Error) -> Response {
    tonic::Status::from(e).into_http::<Body>().into_response()
}

/// The gate, as axum middleware on the gRPC routes: every call runs in an
/// `rpc` span with its method, peer, actor and target (what it acts on,
/// as the handler names it), so everything logged while handling it says
/// which call, by whom, about what.
pub async fn check(state: State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let peer = peer_of(&req).map(|a| a.to_string()).unwrap_or_default();
    let span = tracing::info_span!(
        "rpc",
        method = %req.uri().path(),
        peer = %peer,
        actor = tracing::field::Empty,
        target = tracing::field::Empty,
    );
    tracing::Instrument::instrument(admit_call(state, req, next), span).await
}

async fn admit_call(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some(need) = access::need_of(&path) else {
        return refuse(Error::PermissionDenied(format!(
            "{path} is not open to anyone (it is not in the access table)"
        )));
    };
    let peer = peer_of(&req).map(|a| a.to_string()).unwrap_or_default();
    let audit = audited(&path, need);
    if need.scope == Scope::Open {
        if !audit {
            return next.run(req).await;
        }
        // Runner registration: the token is in the request (a refused one
        // counts as a failed authentication); the handler names the runner.
        let client = peer_ip(&req);
        if let Err(e) = gate.throttle.admit(client) {
            return refuse(e);
        }
        let access = Access::anonymous(need.role);
        req.extensions_mut().insert(access.clone());
        let resp = next.run(req).await;
        let outcome = outcome(&resp);
        if outcome == tonic::Code::Unauthenticated.description() {
            gate.throttle.failed(client);
        }
        gate.write(&access, &path, &peer, outcome);
        return resp;
    }
    let principal = match gate.authenticate_call(req.headers(), peer_ip(&req)) {
        Ok(p) => p,
        Err(e) => {
            if audit {
                gate.write(&Access::anonymous(need.role), &path, &peer, "unauthenticated".into());
            }
            return refuse(e);
        }
    };
    let access = match admit(&principal, need, &path) {
        Ok(a) => a,
        Err(e) => {
            let access = access_of(&principal, need.role);
            if audit {
                gate.write(&access, &path, &peer, "permission denied".into());
            }
            return refuse(e);
        }
    };
    if let Principal::Person(c) = &principal
        && let Err(e) = gate.throttle.call(&c.hash, &c.actor)
    {
        return refuse(e);
    }
    tracing::Span::current().record("actor", access.actor.as_str());
    req.extensions_mut().insert(access.clone());
    let resp = next.run(req).await;
    let result = outcome(&resp);
    if result == "ok" {
        tracing::debug!("call answered");
    } else {
        tracing::info!(outcome = %result, "call failed");
    }
    if audit {
        gate.write(&access, &path, &peer, result);
    }
    match principal {
        Principal::Person(c) => revocable(resp, Arc::clone(&gate.auth), c.hash),
        Principal::Runner(_) => resp,
    }
}

impl Gate {
    /// The principal of a request's credentials, unless its client is over
    /// its quota of failed authentications (a failure counts).
    pub fn authenticate(&self, headers: &http::HeaderMap, client: Option<IpAddr>) -> Result<Principal, Error> {
        self.throttle.admit(client)?;
        self.auth.authenticate_http(headers).map_err(|e| self.throttle.failed(client).unwrap_or(e))
    }

    /// [`Gate::authenticate`] for API calls, which may also come with the
    /// web UI's session cookie.
    pub fn authenticate_call(&self, headers: &http::HeaderMap, client: Option<IpAddr>) -> Result<Principal, Error> {
        self.throttle.admit(client)?;
        self.auth.authenticate_call(headers).map_err(|e| self.throttle.failed(client).unwrap_or(e))
    }

    /// Writes an HTTP route's privileged action to the audit log.
    pub fn write_route(&self, principal: &Principal, action: &str, target: &str, peer: &str, outcome: &str) {
        let access = access_of(principal, viaduct_proto::v1::Role::Read);
        access.target(target);
        self.write(&access, action, peer, outcome.to_string());
    }

    fn write(&self, access: &Access, path: &str, peer: &str, outcome: String) {
        self.audit.record(Action {
            actor: access.actor.clone(),
            token_id: access.token_id.clone(),
            action: path.trim_start_matches('/').to_string(),
            target: access.target.get().cloned().unwrap_or_default(),
            peer: peer.to_string(),
            outcome,
        });
    }
}

/// The outcome of a call from its response head: a failed call is
/// answered trailers-only, its status in the headers.
fn outcome(resp: &Response) -> String {
    match resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => "ok".into(),
        Some(code) => {
            let code = code.parse::<i32>().map(tonic::Code::from).unwrap_or(tonic::Code::Unknown);
            code.description().to_string()
        }
    }
}

/// The [`Access`] of `principal` for a call that needs `need` (HTTP routes
/// build theirs with it too).
pub fn access_of(principal: &Principal, need: viaduct_proto::v1::Role) -> Access {
    match principal {
        Principal::Person(Caller { actor, owner, token_id, hash, grants }) => Access {
            actor: actor.clone(),
            owner: owner.clone(),
            token_id: token_id.clone(),
            token_hash: *hash,
            grants: grants.clone(),
            runner: None,
            need,
            target: Arc::default(),
        },
        Principal::Runner(id) => Access {
            actor: format!("runner {id}"),
            owner: String::new(),
            token_id: String::new(),
            token_hash: [0; 32],
            grants: access::Grants::default(),
            runner: Some(id.clone()),
            need,
            target: Arc::default(),
        },
    }
}

/// Whether `principal` may call a method that needs `need`.
fn admit(principal: &Principal, need: Need, path: &str) -> Result<Access, Error> {
    let access = access_of(principal, need.role);
    let role = access::role_name(need.role);
    let ok = match (principal, need.scope) {
        (_, Scope::Open) => true,
        (Principal::Runner(_), Scope::Runner | Scope::RunnerOrGlobal) => true,
        (Principal::Runner(_), _) => {
            return Err(Error::PermissionDenied(format!("a runner token cannot call {path}")));
        }
        (Principal::Person(_), Scope::Runner) => {
            return Err(Error::PermissionDenied(format!("{path} needs a runner token")));
        }
        (Principal::Person(_), Scope::Signed) => true,
        (Principal::Person(c), Scope::Global | Scope::RunnerOrGlobal) => c.grants.allows(need.role, None),
        // Narrowed to the repository by the handler.
        (Principal::Person(c), Scope::Repo) => c.grants.allows_somewhere(need.role),
    };
    if !ok {
        let on = if need.scope == Scope::Repo { "on a repository" } else { "globally" };
        return Err(Error::PermissionDenied(format!(
            "{} may not call {path}: it needs the {role} role {on}",
            access.actor
        )));
    }
    Ok(access)
}

/// `resp` with its body ended by `UNAUTHENTICATED` trailers as soon as
/// the token with `hash` stops working (revoked, rotated, expired, its
/// user removed).
fn revocable(resp: Response, auth: Arc<Auth>, hash: [u8; 32]) -> Response {
    let changes = tokio_stream::wrappers::WatchStream::from_changes(auth.revocations());
    let (parts, body) = resp.into_parts();
    let body = Revocable { inner: Some(body), changes: Box::pin(changes), auth, hash };
    Response::from_parts(parts, Body::new(body))
}

struct Revocable {
    inner: Option<Body>,
    changes: Pin<Box<dyn Stream<Item = u64> + Send>>,
    auth: Arc<Auth>,
    hash: [u8; 32],
}

impl http_body::Body for Revocable {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        while let Poll::Ready(Some(_)) = this.changes.poll_next_unpin(cx) {
            if !this.auth.still_valid(&this.hash) {
                // Dropping the body ends the handler's stream.
                this.inner = None;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from(tonic::Code::Unauthenticated as i32));
                trailers.insert("grpc-message", http::HeaderValue::from_static("the token was revoked"));
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}
