//! Typed async client for the Viaduct API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), viaduct_sdk::Error> {
//! use viaduct_sdk::{Client, proto::v1::{SubmitRequest, submit_request::Source}};
//! let client = Client::connect("http://127.0.0.1:7700", Some("vda_…".into())).await?;
//! let yaml = "jobs:\n  hello:\n    steps:\n      - run: echo hello\n".to_string();
//! let run = client.runs().submit(SubmitRequest { source: Some(Source::PipelineYaml(yaml)), ..Default::default() }).await?;
//! let status = client.wait_for_run(&run.into_inner().run_id).await?;
//! # Ok(()) }
//! ```
//!
//! [`Client`] wraps one HTTP/2 channel (cheap to clone) and attaches the
//! bearer token to every call. The generated service clients are reachable
//! with [`Client::runs`], [`Client::logs`], … and used as tonic clients.

use std::{str::FromStr, time::Duration};

use tokio_stream::StreamExt;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
pub use viaduct_proto as proto;
use viaduct_proto::v1::{
    FollowRequest, GetRunRequest, LogEvent, Run, Status as RunStatus, WatchRequest, artifacts_client::ArtifactsClient,
    caches_client::CachesClient, follow_request, logs_client::LogsClient, pipelines_client::PipelinesClient,
    plugins_client::PluginsClient, repos_client::ReposClient, run_event::Change,
    runner_agent_client::RunnerAgentClient, runners_client::RunnersClient, runs_client::RunsClient,
    secrets_client::SecretsClient,
};

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server URL is malformed.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The token cannot be sent as a header.
    #[error("the token contains characters that cannot be sent in a header")]
    InvalidToken,
    /// No connection could be made.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{}", status_line(.0))]
    Status(#[from] tonic::Status),
    /// A stream ended before it should have.
    #[error("{0}")]
    Stream(String),
}

/// One readable line for a gRPC status: its code and message.
pub fn status_line(s: &tonic::Status) -> String {
    let code = format!("{:?}", s.code());
    let mut words = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.extend(c.to_lowercase());
    }
    if s.message().is_empty() { words } else { format!("{words}: {}", s.message()) }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl BearerAuth {
    /// An interceptor sending `token` (none: no header).
    pub fn new(token: Option<&str>) -> Result<Self, Error> {
        token
            .map(|t| MetadataValue::from_str(&format!("Bearer {}", t.trim())).map_err(|_| Error::InvalidToken))
            .transpose()
            .map(Self)
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// HTTP/2 flow-control windows. The protocol's default (64 KiB per
/// stream) makes a large transfer (a cache restore, an artifact download)
/// wait for a window update every 64 KiB: 5× slower than the disk on
/// loopback. The server uses the same sizes.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// The endpoint settings every client uses.
fn endpoint(url: &str) -> Result<Endpoint, Error> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::InvalidUrl { url: url.to_string(), reason: e.to_string() })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

/// A channel to `url` (http://host:port), connected now.
pub async fn channel(url: &str) -> Result<Channel, Error> {
    let endpoint = endpoint(url)?
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    endpoint.connect().await.map_err(|e| Error::Connect { url: url.to_string(), reason: source_chain(&e) })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

/// A generated client with the bearer token attached.
pub type Authed<C> = C;

/// A connection to a Viaduct server.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    auth: BearerAuth,
}

type Svc = InterceptedService<Channel, BearerAuth>;

impl Client {
    /// Connects to `url` with an API token.
    pub async fn connect(url: &str, token: Option<String>) -> Result<Self, Error> {
        Ok(Self { channel: channel(url).await?, auth: BearerAuth::new(token.as_deref())? })
    }

    /// A client whose connection is made on first use (and remade after
    /// failures), for long-lived processes.
    pub fn lazy(url: &str, token: Option<&str>) -> Result<Self, Error> {
        Ok(Self { channel: endpoint(url)?.connect_lazy(), auth: BearerAuth::new(token)? })
    }

    /// A client over an existing channel.
    pub fn with_channel(channel: Channel, token: Option<&str>) -> Result<Self, Error> {
        Ok(Self { channel, auth: BearerAuth::new(token)? })
    }

    /// `viaduct.v1.Runs`.
    pub fn runs(&self) -> RunsClient<Svc> {
        RunsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Logs`.
    pub fn logs(&self) -> LogsClient<Svc> {
        LogsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Pipelines`.
    pub fn pipelines(&self) -> PipelinesClient<Svc> {
        PipelinesClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Runners`.
    pub fn runners(&self) -> RunnersClient<Svc> {
        RunnersClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Repos`.
    pub fn repos(&self) -> ReposClient<Svc> {
        ReposClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Secrets`.
    pub fn secrets(&self) -> SecretsClient<Svc> {
        SecretsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Plugins`.
    pub fn plugins(&self) -> PluginsClient<Svc> {
        PluginsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Artifacts`.
    pub fn artifacts(&self) -> ArtifactsClient<Svc> {
        ArtifactsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Caches`.
    pub fn caches(&self) -> CachesClient<Svc> {
        CachesClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.RunnerAgent` (runner token).
    pub fn agent(&self) -> RunnerAgentClient<Svc> {
        RunnerAgentClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Waits until run `id` has finished (through `Runs.Watch`, no polling)
    /// and returns it.
    pub async fn wait_for_run(&self, id: &str) -> Result<Run, Error> {
        use viaduct_proto::StatusWord;
        // Subscribe to new events first, then read: a change after the read
        // is always in the stream.
        let mut events =
            self.runs().watch(WatchRequest { run_id: id.to_string(), ..Default::default() }).await?.into_inner();
        let get =
            || async { Ok::<_, Error>(self.runs().get(GetRunRequest { id: id.to_string() }).await?.into_inner()) };
        let run = get().await?;
        if run.status().is_terminal() {
            return Ok(run);
        }
        while let Some(ev) = events.next().await {
            if let Some(Change::Run(r)) = ev?.change
                && RunStatus::try_from(r.status).is_ok_and(StatusWord::is_terminal)
            {
                // Re-read: the event may predate a retry of the run.
                let run = get().await?;
                if run.status().is_terminal() {
                    return Ok(run);
                }
            }
        }
        Err(Error::Stream(format!("the event stream ended before run {id} finished")))
    }

    /// Follows the logs of a run, job or step (by id shape: "42", "42.1",
    /// "42.1.3"): stored history, then live data, until the scope finishes.
    pub async fn follow(&self, id: &str, follow: bool) -> Result<tonic::Streaming<LogEvent>, Error> {
        let scope = match id.matches('.').count() {
            0 => follow_request::Scope::RunId(id.to_string()),
            1 => follow_request::Scope::JobId(id.to_string()),
            _ => follow_request::Scope::StepId(id.to_string()),
        };
        let req = FollowRequest { scope: Some(scope), no_follow: !follow, ..Default::default() };
        Ok(self.logs().follow(req).await?.into_inner())
    }
}
