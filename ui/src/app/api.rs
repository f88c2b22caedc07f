//! The server API as the app uses it: the generated `viaduct.v1` clients
//! over gRPC-web to the page's own origin, each call carrying the session's
//! bearer token, and errors turned into something to show.
//!
//! Any call answered `UNAUTHENTICATED` (an expired or revoked token) ends
//! the session: the token is forgotten and the shell sends the user to the
//! sign-in page with a message.

use std::fmt;

use leptos::prelude::*;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
};
use tonic_web_wasm_client::Client;
use viaduct_proto::v1::{
    artifacts_client::ArtifactsClient, logs_client::LogsClient, pipelines_client::PipelinesClient,
    repos_client::ReposClient, runners_client::RunnersClient, runs_client::RunsClient,
};

use super::browser;

/// The signed-in state: the token (persisted in `localStorage`) and a
/// message for the sign-in page.
#[derive(Clone, Copy)]
pub struct Session {
    /// The API token; `None` when signed out.
    pub token: RwSignal<Option<String>>,
    /// Why the user was signed out, shown on the sign-in page.
    pub notice: RwSignal<Option<String>>,
}

impl Session {
    /// The session stored in the browser.
    pub fn restore() -> Self {
        let token = browser::load(browser::TOKEN_KEY).filter(|t| !t.trim().is_empty());
        Session { token: RwSignal::new(token), notice: RwSignal::new(None) }
    }

    /// Signs in with a checked token.
    pub fn sign_in(&self, token: String) {
        browser::store(browser::TOKEN_KEY, &token);
        self.notice.set(None);
        self.token.set(Some(token));
    }

    /// Signs out, leaving `notice` for the sign-in page.
    pub fn sign_out(&self, notice: Option<String>) {
        browser::forget(browser::TOKEN_KEY);
        self.notice.set(notice);
        self.token.set(None);
    }
}

/// The session from context.
pub fn use_session() -> Session {
    expect_context::<Session>()
}

/// An API error to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The gRPC code.
    pub code: Code,
    /// The server's (or the transport's) message.
    pub message: String,
}

impl ApiError {
    /// From a gRPC status.
    pub fn from_status(s: &Status) -> Self {
        let message = match s.code() {
            // The fetch itself failed: say so plainly.
            Code::Unknown | Code::Internal if s.message().contains("JS API error") || s.message().is_empty() => {
                "cannot reach the server".to_string()
            }
            Code::Unavailable if s.message().is_empty() => "the server is unavailable".to_string(),
            _ => s.message().to_string(),
        };
        ApiError { code: s.code(), message }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = match self.code {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::Unknown => "error",
            Code::InvalidArgument => "invalid argument",
            Code::DeadlineExceeded => "timed out",
            Code::NotFound => "not found",
            Code::AlreadyExists => "already exists",
            Code::PermissionDenied => "permission denied",
            Code::ResourceExhausted => "too many requests",
            Code::FailedPrecondition => "not possible now",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out of range",
            Code::Unimplemented => "not supported by this server",
            Code::Internal => "server error",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data loss",
            Code::Unauthenticated => "not signed in",
        };
        if self.message.is_empty() { f.write_str(words) } else { write!(f, "{words}: {}", self.message) }
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Debug)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl BearerAuth {
    /// The header for `token`; `None` when it cannot be sent in a header.
    pub fn new(token: &str) -> Option<Self> {
        format!("Bearer {}", token.trim()).parse::<MetadataValue<Ascii>>().ok().map(|v| BearerAuth(Some(v)))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel every client uses.
pub type Channel = InterceptedService<Client, BearerAuth>;

/// Clients of the API for one token.
#[derive(Clone)]
pub struct Api {
    channel: Channel,
    session: Option<Session>,
}

impl Api {
    /// An API with `token` (no session: for checking a token at sign-in).
    /// `None` when the token has characters a header cannot carry.
    pub fn with_token(token: &str) -> Option<Self> {
        let auth = BearerAuth::new(token)?;
        Some(Api { channel: InterceptedService::new(Client::new(browser::origin()), auth), session: None })
    }

    /// `Runs`.
    pub fn runs(&self) -> RunsClient<Channel> {
        RunsClient::new(self.channel.clone())
    }

    /// `Logs`.
    pub fn logs(&self) -> LogsClient<Channel> {
        LogsClient::new(self.channel.clone())
    }

    /// `Pipelines`.
    pub fn pipelines(&self) -> PipelinesClient<Channel> {
        PipelinesClient::new(self.channel.clone())
    }

    /// `Repos`.
    pub fn repos(&self) -> ReposClient<Channel> {
        ReposClient::new(self.channel.clone())
    }

    /// `Runners`.
    pub fn runners(&self) -> RunnersClient<Channel> {
        RunnersClient::new(self.channel.clone())
    }

    /// `Artifacts`.
    pub fn artifacts(&self) -> ArtifactsClient<Channel> {
        ArtifactsClient::new(self.channel.clone())
    }

    /// The message of a call's response, or its error; `UNAUTHENTICATED`
    /// ends the session.
    pub fn check<T>(&self, result: Result<tonic::Response<T>, Status>) -> Result<T, ApiError> {
        result.map(tonic::Response::into_inner).map_err(|s| self.fail(&s))
    }

    /// Turns a status into an error; `UNAUTHENTICATED` ends the session.
    pub fn fail(&self, s: &Status) -> ApiError {
        let e = ApiError::from_status(s);
        if e.code == Code::Unauthenticated
            && let Some(session) = self.session
            && session.token.get_untracked().is_some()
        {
            session.sign_out(Some("Your session ended (the token was refused). Sign in again.".to_string()));
        }
        e
    }
}

/// The API of the signed-in session (its token read now).
pub fn use_api() -> Api {
    let session = use_session();
    let token = session.token.get_untracked().unwrap_or_default();
    let mut api = Api::with_token(&token).unwrap_or_else(|| Api {
        channel: InterceptedService::new(Client::new(browser::origin()), BearerAuth(None)),
        session: None,
    });
    api.session = Some(session);
    api
}
