//! The server API as the app uses it: the generated `viaduct.v1` clients
//! over gRPC-web to the page's own origin, and errors turned into something
//! to show.
//!
//! The session lives in an `HttpOnly` cookie the server sets (after single
//! sign-on, or after the sign-in page hands it an API token): scripts —
//! this app included — never see a token, and the browser sends the cookie
//! with every call. Any call answered `UNAUTHENTICATED` (a revoked or
//! expired session) ends the session and the shell sends the user to the
//! sign-in page with a message.

use std::fmt;

use leptos::{prelude::*, task::spawn_local};
use tonic::{Code, Status};
use tonic_web_wasm_client::Client;
use viaduct_proto::v1::{
    Role, WhoamiRequest, admin_client::AdminClient, artifacts_client::ArtifactsClient, audit_client::AuditClient,
    deployments_client::DeploymentsClient, environments_client::EnvironmentsClient, logs_client::LogsClient,
    pipelines_client::PipelinesClient, repos_client::ReposClient, runners_client::RunnersClient,
    runs_client::RunsClient, services_client::ServicesClient, stats_client::StatsClient, tokens_client::TokensClient,
};

use super::browser;

/// Who is signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedIn {
    /// Not known yet (the first call is in flight).
    Checking,
    /// Signed in as this user (or service token); `admin` when it may do
    /// everything.
    As {
        /// The name.
        name: String,
        /// A global admin.
        admin: bool,
    },
    /// Signed out.
    Out,
}

/// The signed-in state and a message for the sign-in page.
#[derive(Clone, Copy)]
pub struct Session {
    /// Who.
    pub who: RwSignal<SignedIn>,
    /// Why the user was signed out, shown on the sign-in page.
    pub notice: RwSignal<Option<String>>,
}

impl Session {
    /// Asks the server who the session cookie belongs to.
    pub fn restore() -> Self {
        let session = Session { who: RwSignal::new(SignedIn::Checking), notice: RwSignal::new(None) };
        // Earlier versions kept the token where scripts could read it.
        browser::forget("viaduct.token");
        spawn_local(async move { session.refresh().await });
        session
    }

    /// Re-reads who is signed in (after the server set the cookie).
    pub async fn refresh(self) {
        let api = Api { channel: Client::new(browser::origin()), session: None };
        let who = match api.tokens().whoami(WhoamiRequest {}).await {
            Ok(me) => {
                let me = me.into_inner();
                let admin = me.grants.iter().any(|g| g.role == Role::Admin as i32 && g.repo.is_empty());
                SignedIn::As { name: me.name, admin }
            }
            Err(_) => SignedIn::Out,
        };
        if who != SignedIn::Out {
            self.notice.set(None);
        }
        self.who.set(who);
    }

    /// Whether someone is signed in.
    pub fn signed_in(&self) -> bool {
        matches!(self.who.get(), SignedIn::As { .. })
    }

    /// Signs out (the server ends the session and clears its cookie),
    /// leaving `notice` for the sign-in page.
    pub fn sign_out(&self, notice: Option<String>) {
        self.notice.set(notice);
        self.who.set(SignedIn::Out);
        spawn_local(async move {
            browser::fetch("POST", "/auth/logout", None).await;
        });
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

/// The channel every client uses.
pub type Channel = Client;

/// Clients of the API (the browser adds the session cookie).
#[derive(Clone)]
pub struct Api {
    channel: Channel,
    session: Option<Session>,
}

impl Api {
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

    /// `Tokens`.
    pub fn tokens(&self) -> TokensClient<Channel> {
        TokensClient::new(self.channel.clone())
    }

    /// `Audit`.
    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone())
    }

    /// `Stats`.
    pub fn stats(&self) -> StatsClient<Channel> {
        StatsClient::new(self.channel.clone())
    }

    /// `Admin`.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// `Environments`.
    pub fn environments(&self) -> EnvironmentsClient<Channel> {
        EnvironmentsClient::new(self.channel.clone())
    }

    /// `Deployments`.
    pub fn deployments(&self) -> DeploymentsClient<Channel> {
        DeploymentsClient::new(self.channel.clone())
    }

    /// `Services`.
    pub fn services(&self) -> ServicesClient<Channel> {
        ServicesClient::new(self.channel.clone())
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
            && matches!(session.who.get_untracked(), SignedIn::As { .. })
        {
            session.sign_out(Some("Your session ended (it expired or was revoked). Sign in again.".to_string()));
        }
        e
    }
}

/// The API of the signed-in session.
pub fn use_api() -> Api {
    Api { channel: Client::new(browser::origin()), session: Some(use_session()) }
}
