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

#[cfg(feature = "planned")]
pub mod planned;

use std::{str::FromStr, time::Duration};

use tokio_stream::StreamExt;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
pub use viaduct_proto as proto;
use viaduct_proto::v1::{
    FollowRequest, GetRunRequest, LogEvent, Run, Status as RunStatus, WatchRequest, admin_client::AdminClient,
    artifacts_client::ArtifactsClient, audit_client::AuditClient, caches_client::CachesClient,
    debug_client::DebugClient, deployments_client::DeploymentsClient, environments_client::EnvironmentsClient,
    follow_request, logs_client::LogsClient, pipelines_client::PipelinesClient, plugins_client::PluginsClient,
    repos_client::ReposClient, run_event::Change, runner_agent_client::RunnerAgentClient,
    runners_client::RunnersClient, runs_client::RunsClient, secrets_client::SecretsClient,
    services_client::ServicesClient, stats_client::StatsClient, tokens_client::TokensClient, users_client::UsersClient,
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
    /// A token would cross the network unencrypted.
    #[error(
        "refusing to talk to {url} in plaintext: tokens, secrets and sources would cross the network readable by anyone \
         on the way. Use https:// (trust a private CA with --ca-cert), or --insecure on a network you trust"
    )]
    Plaintext {
        /// The URL.
        url: String,
    },
    /// A TLS setting (a CA or client certificate file) is unusable.
    #[error("{0}")]
    Tls(String),
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

/// How a client reaches a server: whom it trusts besides the system's
/// roots, whether plaintext to another machine is allowed, and its own
/// certificate for mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    /// A CA (PEM) trusted besides the system's roots (a private CA, or
    /// the one `cargo xtask up` makes).
    pub ca_cert: Option<Vec<u8>>,
    /// Allow `http://` to a host that is not this machine.
    pub insecure: bool,
    /// Client certificate chain and key (PEM), for servers that ask.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Transport {
    /// From files: `ca_cert`, and `client_cert` with `client_key`.
    pub fn from_files(
        ca_cert: Option<&std::path::Path>,
        insecure: bool,
        client_cert: Option<&std::path::Path>,
        client_key: Option<&std::path::Path>,
    ) -> Result<Self, Error> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())));
        let identity = match (client_cert, client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => return Err(Error::Tls("a client certificate needs its key, and a key its certificate".into())),
        };
        Ok(Self { ca_cert: ca_cert.map(read).transpose()?, insecure, identity })
    }

    /// From the environment: `VIADUCT_CA_CERT`, `VIADUCT_INSECURE` (`1`),
    /// `VIADUCT_CLIENT_CERT` and `VIADUCT_CLIENT_KEY` (paths).
    pub fn from_env() -> Result<Self, Error> {
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
        let insecure = std::env::var("VIADUCT_INSECURE").is_ok_and(|v| v == "1" || v == "true");
        Self::from_files(
            path("VIADUCT_CA_CERT").as_deref(),
            insecure,
            path("VIADUCT_CLIENT_CERT").as_deref(),
            path("VIADUCT_CLIENT_KEY").as_deref(),
        )
    }
}

impl Transport {
    /// `url` parsed, if this transport may reach it: `http://` or
    /// `https://`, and `http://` only to this machine unless `insecure`.
    pub fn check(&self, url: &str) -> Result<http::Uri, Error> {
        let bad = |reason: String| Error::InvalidUrl { url: url.to_string(), reason };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        match uri.scheme_str() {
            Some("https") => Ok(uri),
            Some("http") if self.insecure || uri.host().is_some_and(is_local) => Ok(uri),
            Some("http") => Err(Error::Plaintext { url: url.to_string() }),
            _ => Err(bad("use http:// or https://".into())),
        }
    }
}

/// Whether `host` is this machine (plaintext to it crosses no network).
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The endpoint settings every client uses, for `url` over `transport`:
/// `https://` verifies the server (system roots and `ca_cert`); `http://`
/// only to this machine unless `insecure`.
fn endpoint(url: &str, transport: &Transport) -> Result<Endpoint, Error> {
    let bad = |reason: String| Error::InvalidUrl { url: url.to_string(), reason };
    let uri = transport.check(url)?;
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    if uri.scheme_str() == Some("https") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &transport.ca_cert {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &transport.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| Error::Tls(format!("TLS settings: {}", source_chain(&e))))?;
    }
    Ok(endpoint)
}

/// A channel to `url` (http(s)://host:port) over the transport of the
/// environment ([`Transport::from_env`]), connected now.
pub async fn channel(url: &str) -> Result<Channel, Error> {
    channel_with(url, &Transport::from_env()?).await
}

/// A channel to `url` over `transport`, connected now.
pub async fn channel_with(url: &str, transport: &Transport) -> Result<Channel, Error> {
    let endpoint = endpoint(url, transport)?
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
    /// The transport comes from the environment ([`Transport::from_env`]).
    pub async fn connect(url: &str, token: Option<String>) -> Result<Self, Error> {
        Self::connect_with(url, token, &Transport::from_env()?).await
    }

    /// Connects to `url` with an API token over `transport`.
    pub async fn connect_with(url: &str, token: Option<String>, transport: &Transport) -> Result<Self, Error> {
        Ok(Self { channel: channel_with(url, transport).await?, auth: BearerAuth::new(token.as_deref())? })
    }

    /// A client whose connection is made on first use (and remade after
    /// failures), for long-lived processes; the transport comes from the
    /// environment.
    pub fn lazy(url: &str, token: Option<&str>) -> Result<Self, Error> {
        Self::lazy_with(url, token, &Transport::from_env()?)
    }

    /// [`Client::lazy`] over `transport`.
    pub fn lazy_with(url: &str, token: Option<&str>, transport: &Transport) -> Result<Self, Error> {
        Ok(Self { channel: endpoint(url, transport)?.connect_lazy(), auth: BearerAuth::new(token)? })
    }

    /// A client of whichever of `urls` answers (replicas of one server):
    /// calls are spread over those that are up. Connects lazily.
    pub fn lazy_any(urls: &[String], token: Option<&str>, transport: &Transport) -> Result<Self, Error> {
        let mut endpoints = urls.iter().map(|u| endpoint(u, transport)).collect::<Result<Vec<_>, _>>()?;
        let channel = match endpoints.len() {
            0 => return Err(Error::InvalidUrl { url: String::new(), reason: "no server URL".into() }),
            1 => endpoints.remove(0).connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(Self { channel, auth: BearerAuth::new(token)? })
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

    /// `viaduct.v1.Tokens`.
    pub fn tokens(&self) -> TokensClient<Svc> {
        TokensClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Users`.
    pub fn users(&self) -> UsersClient<Svc> {
        UsersClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Stats`.
    pub fn stats(&self) -> StatsClient<Svc> {
        StatsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Admin`.
    pub fn admin(&self) -> AdminClient<Svc> {
        AdminClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Audit`.
    pub fn audit(&self) -> AuditClient<Svc> {
        AuditClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Debug`.
    pub fn debug(&self) -> DebugClient<Svc> {
        DebugClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Environments`.
    pub fn environments(&self) -> EnvironmentsClient<Svc> {
        EnvironmentsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Deployments`.
    pub fn deployments(&self) -> DeploymentsClient<Svc> {
        DeploymentsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.Services`.
    pub fn services(&self) -> ServicesClient<Svc> {
        ServicesClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// `viaduct.v1.RunnerAgent` (runner token).
    pub fn agent(&self) -> RunnerAgentClient<Svc> {
        RunnerAgentClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Waits until run `id` has finished (through `Runs.Watch`, no polling)
    /// and returns it.
    pub async fn wait_for_run(&self, id: &str) -> Result<Run, Error> {
        use viaduct_proto::StatusWord;
        let get =
            || async { Ok::<_, Error>(self.runs().get(GetRunRequest { id: id.to_string() }).await?.into_inner()) };
        // Often it has ended already (a follower of its logs saw them end):
        // one read.
        let run = get().await?;
        if run.status().is_terminal() {
            return Ok(run);
        }
        // Subscribe to new events first, then read again: a change after
        // the read is always in the stream.
        let mut events =
            self.runs().watch(WatchRequest { run_id: id.to_string(), ..Default::default() }).await?.into_inner();
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
