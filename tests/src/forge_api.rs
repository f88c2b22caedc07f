//! The REST APIs of three code forges, as far as a CI system reporting
//! commit statuses and deployments uses them, for end-to-end tests of that
//! reporting: one local server answering GitHub's, GitLab's and
//! Gitea/Forgejo's documented endpoints, checking what it receives
//! (credentials, headers, fields, allowed values, lengths, state
//! transitions), keeping every accepted delivery (deployments apart:
//! [`ForgeApi::deployments`]) and every refusal, and injecting faults
//! (errors, rate limits, hangs, outages) on demand.
//!
//! The API roots: GitHub at [`ForgeApi::url`], GitLab at `url() + "/api/v4"`,
//! Gitea and Forgejo at `url() + "/api/v1"`. Endpoints:
//!
//! - GitHub: `POST /repos/{owner}/{repo}/statuses/{sha}` (commit statuses),
//!   `POST /repos/{owner}/{repo}/check-runs` and
//!   `PATCH /repos/{owner}/{repo}/check-runs/{id}` (check runs, which take
//!   only a GitHub App's installation token, as on GitHub);
//!   and, for GitHub Apps ([`ForgeApi::add_app`]), signed in with the app's
//!   JWT (RS256, checked as GitHub does): `GET /repos/{owner}/{repo}/installation`
//!   and `POST /app/installations/{id}/access_tokens` (an installation
//!   token, valid an hour, until [`ForgeApi::revoke_tokens`]);
//!   and deployments: `POST /repos/{owner}/{repo}/deployments` (a full
//!   commit sha as `ref`, `required_contexts` checked against the commit's
//!   statuses as GitHub does, `auto_merge` false: there is no repository to
//!   merge in), `GET /repos/{owner}/{repo}/deployments` (`sha`, `ref`,
//!   `task`, `environment`, `per_page`, `page`; newest first) and
//!   `POST /repos/{owner}/{repo}/deployments/{id}/statuses` (taking the
//!   static token or an installation token);
//! - GitLab: `POST /api/v4/projects/{id}/statuses/{sha}`, `{id}` numeric or
//!   a URL-encoded path (`group%2Fapp`), with GitLab's pipelines and job
//!   state machine; deployments: `POST /api/v4/projects/{id}/deployments`
//!   and `PUT /api/v4/projects/{id}/deployments/{deployment_id}`, with
//!   GitLab's parameters and its deployment state machine;
//! - Gitea/Forgejo: `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`.
//!
//! And, to read the commit statuses back (with the credentials each
//! forge's `POST` takes; counted by [`ForgeApi::gets`], never deliveries):
//!
//! - GitHub: `GET /repos/{owner}/{repo}/commits/{sha}/status`, the combined
//!   status (the latest commit status of each context, newest first;
//!   `per_page`, `page`);
//! - GitLab: `GET /api/v4/projects/{id}/repository/commits/{sha}/statuses`
//!   (the latest job of each name per pipeline, or every one with
//!   `all=true`; `ref`, `stage`, `name`, `pipeline_id`, `order_by`, `sort`,
//!   `per_page`, `page`);
//! - Gitea/Forgejo: `GET /api/v1/repos/{owner}/{repo}/commits/{sha}/status`,
//!   the combined status (`page`, `limit`).
//!
//! The server runs on its own thread and runtime (so it does not depend on
//! the test's runtime) and stops when dropped.

use std::{
    collections::{HashSet, VecDeque, hash_map::RandomState},
    hash::BuildHasher,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, patch, post, put},
};
use serde_json::{Map, Value, json};

/// The forge a delivery was made to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// GitHub's REST API (commit statuses and check runs).
    GitHub,
    /// GitLab's REST API v4.
    GitLab,
    /// Gitea's (and Forgejo's) REST API v1.
    Gitea,
}

/// One accepted request: a commit status, or a check run created or
/// updated.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The forge it was made to.
    pub forge: Forge,
    /// `owner/repo`, or GitLab's project id or path (decoded).
    pub project: String,
    /// The commit (a check run's `head_sha`).
    pub sha: String,
    /// The status's context (GitLab: `name`), or the check run's name.
    pub context: String,
    /// The status's state, or the check run's status after the request.
    pub state: String,
    /// The description sent ("" when none); a check run's output title.
    pub description: String,
    /// The target URL sent ("" when none); a check run's `details_url`.
    pub target_url: String,
    /// GitLab: the pipeline the status went to.
    pub pipeline_id: Option<u64>,
    /// GitHub: the check run created or updated.
    pub check_run: Option<u64>,
    /// GitHub: the check run's conclusion after the request.
    pub conclusion: Option<String>,
    /// GitHub: the check run output's summary sent with this request.
    pub summary: Option<String>,
    /// GitHub: the check run annotations sent with this request.
    pub annotations: Vec<Value>,
    /// When it arrived.
    pub at: Instant,
}

/// A GitHub check run as it stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRun {
    /// Its id.
    pub id: u64,
    /// `owner/repo`.
    pub project: String,
    /// Its name (the latest given).
    pub name: String,
    /// The commit.
    pub head_sha: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// Set once completed.
    pub conclusion: Option<String>,
    /// The latest `external_id` given ("" when none).
    pub external_id: String,
    /// The latest `details_url` given ("" when none).
    pub details_url: String,
    /// The latest output's title ("" when none).
    pub title: String,
    /// The latest output's summary ("" when none).
    pub summary: String,
    /// Every annotation sent, across all requests (GitHub appends them).
    pub annotations: Vec<Value>,
}

/// A deployment GitHub or GitLab accepted, as it now stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The forge that holds it.
    pub forge: Forge,
    /// Its id (the forge's).
    pub id: u64,
    /// `owner/repo`, or GitLab's project id or path (decoded).
    pub project: String,
    /// The commit deployed.
    pub sha: String,
    /// The ref given (GitHub: the `ref` it was made for; GitLab: `ref`).
    pub git_ref: String,
    /// The environment (GitHub: the latest a status named).
    pub environment: String,
    /// GitHub: its `task`; GitLab: "".
    pub task: String,
    /// GitHub: its description ("" when none).
    pub description: String,
    /// GitHub: the payload given (`null` when none).
    pub payload: Value,
    /// GitHub: whether it was said to be a production environment.
    pub production_environment: Option<bool>,
    /// GitLab: whether `ref` is a tag.
    pub tag: Option<bool>,
    /// GitLab: its status now (`created`, `running`, `success`, `failed`,
    /// `canceled`); GitHub: its latest status's state ("" before any).
    pub status: String,
    /// Every state it was given, in arrival order: GitHub's statuses;
    /// GitLab's status on creation, then each update's.
    pub statuses: Vec<DeploymentStatus>,
}

/// One state a deployment was given.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentStatus {
    /// Its id (GitHub's status; GitLab: the deployment's).
    pub id: u64,
    /// The state: GitHub's `state`, GitLab's `status`.
    pub state: String,
    /// GitHub: its description ("" when none).
    pub description: String,
    /// GitHub: its `log_url` (or `target_url`; "" when none).
    pub log_url: String,
    /// GitHub: its `environment_url` ("" when none).
    pub environment_url: String,
    /// When it arrived.
    pub created_at: String,
}

/// The three forges' APIs on a local port (stopped on drop).
pub struct ForgeApi {
    addr: SocketAddr,
    ledger: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ForgeApi {
    /// Serves the APIs on a free loopback port, accepting `token` as the
    /// credential of every forge.
    pub fn start(token: &str) -> ForgeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the listener's address");
        let ledger: Shared = Arc::new(Mutex::new(Ledger::new(token)));
        let app = router(ledger.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("forge-api".into())
            .spawn(move || serve(listener, app, stopped))
            .expect("start the forge API's thread");
        ForgeApi { addr, ledger, stop: Some(stop), thread: Some(thread) }
    }

    /// Its base URL, `http://127.0.0.1:PORT` (GitHub's API root).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every accepted request, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.ledger).deliveries.clone()
    }

    /// Every refused request: its method, path and why.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.ledger).refused.clone()
    }

    /// How many requests arrived, injected failures included.
    pub fn requests(&self) -> usize {
        lock(&self.ledger).requests
    }

    /// How many requests to the endpoints reading commit statuses back
    /// (GitHub's and Gitea's combined status, GitLab's statuses of a
    /// commit) were answered 200.
    pub fn gets(&self) -> usize {
        lock(&self.ledger).gets
    }

    /// The accepted states of `sha` for `context` (a check run's statuses
    /// for its name), in arrival order.
    pub fn states_of(&self, sha: &str, context: &str) -> Vec<String> {
        let ledger = lock(&self.ledger);
        ledger.deliveries.iter().filter(|d| d.sha == sha && d.context == context).map(|d| d.state.clone()).collect()
    }

    /// Waits for `probe` to find what it wants in the deliveries so far,
    /// polling every 20 ms up to [`crate::WAIT`]; panics with `what` and
    /// the deliveries and refusals so far on timeout.
    pub async fn wait_for<T>(&self, what: &str, mut probe: impl FnMut(&[Delivery]) -> Option<T>) -> T {
        let waited = tokio::time::timeout(
            crate::WAIT - Duration::from_secs(1),
            crate::eventually(what, || {
                let found = probe(&self.deliveries());
                async move { found }
            }),
        )
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; deliveries so far: {:#?}; refused: {:#?}",
                self.deliveries(),
                self.refused()
            )
        })
    }

    /// The next `n` requests (to any route) are answered `status`, with
    /// `headers` and the body `{"message": "injected"}`, and not recorded
    /// as deliveries. E.g. 502; 429 with `retry-after`; GitHub's primary
    /// rate limit (403, `x-ratelimit-remaining: 0`, `x-ratelimit-reset`)
    /// or its secondary one (403 with `retry-after`).
    pub fn fail_next(&self, n: usize, status: u16, headers: &[(&str, &str)]) {
        let status = StatusCode::from_u16(status).expect("an HTTP status code");
        let headers: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::try_from(*k).expect("a header name");
                (name, HeaderValue::try_from(*v).expect("a header value"))
            })
            .collect();
        let fault = Fault::Fail { status, headers };
        lock(&self.ledger).faults.extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` requests are held without an answer for 120 s (their
    /// client must time out), and not recorded as deliveries.
    pub fn hang_next(&self, n: usize) {
        lock(&self.ledger).faults.extend(std::iter::repeat_n(Fault::Hang, n));
    }

    /// While `up` is false, every request is answered 503 (and no injected
    /// fault is consumed).
    pub fn set_available(&self, up: bool) {
        lock(&self.ledger).available = up;
    }

    /// Registers GitHub App `app_id`, whose JWTs verify with
    /// `public_key_pem` (an RSA public key, `BEGIN PUBLIC KEY` or `BEGIN RSA
    /// PUBLIC KEY`), installed (as `installation_id`) on every repository.
    /// Registering an app id again replaces it. Panics on a bad key.
    pub fn add_app(&self, app_id: u64, public_key_pem: &str, installation_id: u64) {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("app {app_id}'s public key is not an RSA public key in PEM: {e}"));
        let mut ledger = lock(&self.ledger);
        ledger.apps.retain(|app| app.id != app_id);
        ledger.apps.push(App { id: app_id, key, installation: installation_id });
    }

    /// How many installation tokens were granted.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.ledger).installation_tokens.len()
    }

    /// Every installation token granted so far is revoked: its use is
    /// answered 401 "Bad credentials", refused with a reason containing
    /// "revoked" (see [`ForgeApi::refused_except_revoked`]).
    pub fn revoke_tokens(&self) {
        for token in &mut lock(&self.ledger).installation_tokens {
            token.revoked = true;
        }
    }

    /// The refusals other than of revoked installation tokens.
    pub fn refused_except_revoked(&self) -> Vec<String> {
        lock(&self.ledger).refused.iter().filter(|r| !r.contains(REVOKED)).cloned().collect()
    }

    /// Every check run as it now stands, in creation order.
    pub fn check_runs(&self) -> Vec<CheckRun> {
        lock(&self.ledger).check_runs.iter().map(StoredRun::public).collect()
    }

    /// Every deployment GitHub or GitLab accepted, as it now stands (with
    /// every state it was given), in creation order.
    pub fn deployments(&self) -> Vec<Deployment> {
        lock(&self.ledger).deployments.clone()
    }

    /// The body GitHub sends app `app_id` (`X-GitHub-Event: check_run`)
    /// when `sender` clicks "Re-run" on check run `check_run_id`: action
    /// `rerequested`, the check run as it stands (with the app that made
    /// it, `app_id`), the repository, the installation (when `app_id` is
    /// registered) and the sender. Panics when there is no such check run.
    pub fn rerequested_payload(&self, check_run_id: u64, app_id: u64, sender: &str) -> String {
        let ledger = lock(&self.ledger);
        let run = ledger
            .check_runs
            .iter()
            .find(|r| r.id == check_run_id)
            .unwrap_or_else(|| panic!("no check run {check_run_id}"));
        let root = self.url();
        let (owner, name) = run.project.split_once('/').unwrap_or((&run.project, ""));
        let mut payload = json!({
            "action": "rerequested",
            "check_run": {
                "id": run.id,
                "node_id": format!("CR_{}", run.id),
                "name": run.name,
                "head_sha": run.head_sha,
                "external_id": run.external_id.clone().unwrap_or_default(),
                "url": format!("{root}/repos/{}/check-runs/{}", run.project, run.id),
                "html_url": format!("{root}/{}/runs/{}", run.project, run.id),
                "details_url": run.details_url.clone().unwrap_or_default(),
                "status": run.status,
                "conclusion": run.conclusion,
                "started_at": run.started_at,
                "completed_at": run.completed_at,
                "check_suite": { "id": run.id + 1_000_000, "head_sha": run.head_sha, "status": run.status },
                "app": { "id": app_id, "slug": "viaduct", "name": "Viaduct" },
                "pull_requests": [],
            },
            "repository": {
                "id": 1,
                "name": name,
                "full_name": run.project,
                "owner": { "login": owner, "id": 1 },
                "private": true,
            },
            "sender": { "login": sender, "id": 2, "type": "User" },
        });
        if let Some(app) = ledger.apps.iter().find(|a| a.id == app_id) {
            payload["installation"] = json!({ "id": app.installation, "node_id": format!("IN_{}", app.installation) });
        }
        payload.to_string()
    }
}

impl Drop for ForgeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a hung request is held.
const HANG: Duration = Duration::from_secs(120);

/// The largest request body read.
const BODY_LIMIT: usize = 8 << 20;

/// The state shared by the server and the test.
type Shared = Arc<Mutex<Ledger>>;

/// What the server knows and has seen.
struct Ledger {
    token: String,
    available: bool,
    faults: VecDeque<Fault>,
    requests: usize,
    github_requests: usize,
    gets: usize,
    deliveries: Vec<Delivery>,
    statuses: Vec<StoredStatus>,
    refused: Vec<String>,
    last_id: u64,
    check_runs: Vec<StoredRun>,
    deployments: Vec<Deployment>,
    pipelines: Vec<Pipeline>,
    jobs: Vec<Job>,
    apps: Vec<App>,
    installation_tokens: Vec<InstallationToken>,
}

impl Ledger {
    /// Nothing seen yet; up, with no faults.
    fn new(token: &str) -> Self {
        Ledger {
            token: token.to_string(),
            available: true,
            faults: VecDeque::new(),
            requests: 0,
            github_requests: 0,
            gets: 0,
            deliveries: Vec::new(),
            statuses: Vec::new(),
            refused: Vec::new(),
            last_id: 0,
            check_runs: Vec::new(),
            deployments: Vec::new(),
            pipelines: Vec::new(),
            jobs: Vec::new(),
            apps: Vec::new(),
            installation_tokens: Vec::new(),
        }
    }

    /// A fresh id (statuses, check runs, deployments, pipelines and jobs
    /// share one sequence).
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }
}

/// The ledger, even if a panicking holder poisoned it.
fn lock(ledger: &Shared) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// An injected answer.
#[derive(Clone)]
enum Fault {
    Fail { status: StatusCode, headers: Vec<(HeaderName, HeaderValue)> },
    Hang,
}

/// A commit status GitHub or Gitea accepted, as their combined status
/// answers it.
struct StoredStatus {
    id: u64,
    forge: Forge,
    project: String,
    sha: String,
    context: String,
    state: String,
    description: Option<String>,
    target_url: Option<String>,
    created_at: String,
}

impl StoredStatus {
    /// The status `fields` asked for, accepted now as `id`.
    fn new(id: u64, forge: Forge, project: &str, sha: &str, fields: &StatusFields) -> Self {
        StoredStatus {
            id,
            forge,
            project: project.to_string(),
            sha: sha.to_string(),
            context: fields.context.clone(),
            state: fields.state.clone(),
            description: fields.description.clone(),
            target_url: fields.target_url.clone(),
            created_at: timestamp(SystemTime::now()),
        }
    }
}

/// A GitHub check run as it stands.
struct StoredRun {
    id: u64,
    project: String,
    name: String,
    head_sha: String,
    status: String,
    conclusion: Option<String>,
    details_url: Option<String>,
    external_id: Option<String>,
    /// The latest output.
    output: Option<Output>,
    /// Every annotation sent.
    annotations: Vec<Value>,
    started_at: String,
    completed_at: Option<String>,
}

impl StoredRun {
    /// As [`ForgeApi::check_runs`] shows it.
    fn public(&self) -> CheckRun {
        let output = self.output.as_ref();
        CheckRun {
            id: self.id,
            project: self.project.clone(),
            name: self.name.clone(),
            head_sha: self.head_sha.clone(),
            status: self.status.clone(),
            conclusion: self.conclusion.clone(),
            external_id: self.external_id.clone().unwrap_or_default(),
            details_url: self.details_url.clone().unwrap_or_default(),
            title: output.map(|o| o.title.clone()).unwrap_or_default(),
            summary: output.map(|o| o.summary.clone()).unwrap_or_default(),
            annotations: self.annotations.clone(),
        }
    }
}

/// A GitHub App, installed on every repository.
struct App {
    id: u64,
    key: jsonwebtoken::DecodingKey,
    installation: u64,
}

/// An installation token granted.
struct InstallationToken {
    token: String,
    expires: SystemTime,
    revoked: bool,
}

/// A GitLab pipeline, which external statuses join as jobs.
#[derive(Clone)]
struct Pipeline {
    id: u64,
    project: String,
    sha: String,
    git_ref: String,
}

/// A GitLab job made by external statuses.
#[derive(Clone)]
struct Job {
    id: u64,
    pipeline: u64,
    git_ref: String,
    name: String,
    status: String,
    description: Option<String>,
    target_url: Option<String>,
    created_at: String,
}

// ---------------------------------------------------------------- serving

/// The endpoints served.
#[derive(Clone, Copy)]
enum Endpoint {
    GitHubStatus,
    CheckRunCreate,
    CheckRunUpdate,
    AppInstallation,
    AccessToken,
    GitLabStatus,
    GiteaStatus,
    GitHubCombined,
    GitLabStatuses,
    GiteaCombined,
    DeploymentCreate,
    DeploymentList,
    DeploymentStatusCreate,
    GitLabDeploymentCreate,
    GitLabDeploymentUpdate,
}

impl Endpoint {
    /// GitHub's (whose answers carry its rate-limit headers).
    fn is_github(self) -> bool {
        !matches!(
            self,
            Endpoint::GitLabStatus
                | Endpoint::GiteaStatus
                | Endpoint::GitLabStatuses
                | Endpoint::GiteaCombined
                | Endpoint::GitLabDeploymentCreate
                | Endpoint::GitLabDeploymentUpdate
        )
    }

    /// One reading commit statuses back (counted by [`ForgeApi::gets`]).
    fn is_read(self) -> bool {
        matches!(self, Endpoint::GitHubCombined | Endpoint::GitLabStatuses | Endpoint::GiteaCombined)
    }
}

/// The endpoints, behind the fault injector; anything else is refused.
fn router(ledger: Shared) -> Router {
    Router::new()
        .route("/repos/{owner}/{repo}/statuses/{sha}", post(|s, r| answer(s, Endpoint::GitHubStatus, r)))
        .route("/repos/{owner}/{repo}/check-runs", post(|s, r| answer(s, Endpoint::CheckRunCreate, r)))
        .route("/repos/{owner}/{repo}/check-runs/{id}", patch(|s, r| answer(s, Endpoint::CheckRunUpdate, r)))
        .route("/repos/{owner}/{repo}/installation", get(|s, r| answer(s, Endpoint::AppInstallation, r)))
        .route("/app/installations/{id}/access_tokens", post(|s, r| answer(s, Endpoint::AccessToken, r)))
        .route("/api/v4/projects/{id}/statuses/{sha}", post(|s, r| answer(s, Endpoint::GitLabStatus, r)))
        .route("/api/v1/repos/{owner}/{repo}/statuses/{sha}", post(|s, r| answer(s, Endpoint::GiteaStatus, r)))
        .route("/repos/{owner}/{repo}/commits/{sha}/status", get(|s, r| answer(s, Endpoint::GitHubCombined, r)))
        .route(
            "/api/v4/projects/{id}/repository/commits/{sha}/statuses",
            get(|s, r| answer(s, Endpoint::GitLabStatuses, r)),
        )
        .route("/api/v1/repos/{owner}/{repo}/commits/{sha}/status", get(|s, r| answer(s, Endpoint::GiteaCombined, r)))
        .route(
            "/repos/{owner}/{repo}/deployments",
            post(|s, r| answer(s, Endpoint::DeploymentCreate, r)).get(|s, r| answer(s, Endpoint::DeploymentList, r)),
        )
        .route(
            "/repos/{owner}/{repo}/deployments/{id}/statuses",
            post(|s, r| answer(s, Endpoint::DeploymentStatusCreate, r)),
        )
        .route("/api/v4/projects/{id}/deployments", post(|s, r| answer(s, Endpoint::GitLabDeploymentCreate, r)))
        .route(
            "/api/v4/projects/{id}/deployments/{deployment_id}",
            put(|s, r| answer(s, Endpoint::GitLabDeploymentUpdate, r)),
        )
        .method_not_allowed_fallback(|s, r| no_route(s, StatusCode::METHOD_NOT_ALLOWED, r))
        .fallback(|s, r| no_route(s, StatusCode::NOT_FOUND, r))
        .layer(middleware::from_fn_with_state(ledger.clone(), faults))
        .with_state(ledger)
}

/// The server's thread: its own runtime, until `stop` fires (or the
/// `ForgeApi` is dropped); hung requests are dropped with the runtime.
fn serve(listener: std::net::TcpListener, app: Router, stop: tokio::sync::oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the forge API's runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        tokio::select! {
            served = axum::serve(listener, app).into_future() => served.expect("serve the forge API"),
            _ = stop => {}
        }
    });
}

/// Counts every request, and answers it with the next injected fault, if
/// any, or 503 while unavailable.
async fn faults(State(ledger): State<Shared>, req: Request, next: Next) -> Response {
    let fault = {
        let mut ledger = lock(&ledger);
        ledger.requests += 1;
        if !ledger.available {
            return message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
        ledger.faults.pop_front()
    };
    match fault {
        None => next.run(req).await,
        Some(Fault::Fail { status, headers }) => {
            let mut resp = message(status, "injected");
            resp.headers_mut().extend(headers);
            resp
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(HANG).await;
            message(StatusCode::GATEWAY_TIMEOUT, "injected hang")
        }
    }
}

/// A request to no endpoint (or with the wrong method): refused.
async fn no_route(State(ledger): State<Shared>, status: StatusCode, req: Request) -> Response {
    let why = if status == StatusCode::NOT_FOUND { "no such endpoint" } else { "method not allowed" };
    lock(&ledger).refused.push(format!("{} {}: {why}", req.method(), req.uri().path()));
    message(status, if status == StatusCode::NOT_FOUND { "Not Found" } else { "Method Not Allowed" })
}

/// `{"message": text}` with `status`.
fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

/// Reads the request, runs the endpoint's checks and bookkeeping, and
/// records a refusal.
async fn answer(State(ledger): State<Shared>, endpoint: Endpoint, req: Request) -> Response {
    let call = Call::read(req).await;
    let mut ledger = lock(&ledger);
    let outcome = match endpoint {
        Endpoint::GitHubStatus => github_status(&mut ledger, &call).map(unpaged),
        Endpoint::CheckRunCreate => check_run_create(&mut ledger, &call).map(unpaged),
        Endpoint::CheckRunUpdate => check_run_update(&mut ledger, &call).map(unpaged),
        Endpoint::AppInstallation => app_installation(&ledger, &call).map(unpaged),
        Endpoint::AccessToken => access_token(&mut ledger, &call).map(unpaged),
        Endpoint::GitLabStatus => gitlab_status(&mut ledger, &call).map(unpaged),
        Endpoint::GiteaStatus => gitea_status(&mut ledger, &call).map(unpaged),
        Endpoint::GitHubCombined => github_combined(&ledger, &call),
        Endpoint::GitLabStatuses => gitlab_statuses(&ledger, &call),
        Endpoint::GiteaCombined => gitea_combined(&ledger, &call),
        Endpoint::DeploymentCreate => deployment_create(&mut ledger, &call).map(unpaged),
        Endpoint::DeploymentList => deployment_list(&ledger, &call),
        Endpoint::DeploymentStatusCreate => deployment_status_create(&mut ledger, &call).map(unpaged),
        Endpoint::GitLabDeploymentCreate => gitlab_deployment_create(&mut ledger, &call).map(unpaged),
        Endpoint::GitLabDeploymentUpdate => gitlab_deployment_update(&mut ledger, &call).map(unpaged),
    };
    let (status, body, headers) = outcome.unwrap_or_else(|refusal| {
        ledger.refused.push(format!("{} {}: {}", call.method, call.path, refusal.why));
        (refusal.status, refusal.body, Vec::new())
    });
    if endpoint.is_read() && status == StatusCode::OK {
        ledger.gets += 1;
    }
    let mut resp = (status, Json(body)).into_response();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            resp.headers_mut().insert(name, value);
        }
    }
    if endpoint.is_github() {
        ledger.github_requests += 1;
        rate_limit_headers(resp.headers_mut(), ledger.github_requests);
    }
    resp
}

/// GitHub's rate-limit headers, sent with every answer.
fn rate_limit_headers(headers: &mut HeaderMap, used: usize) {
    let reset = epoch_seconds(SystemTime::now()) + 3600;
    let remaining = 5000usize.saturating_sub(used);
    for (name, value) in [
        ("x-ratelimit-limit", "5000".to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-used", used.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
        ("x-ratelimit-resource", "core".to_string()),
    ] {
        headers.insert(name, HeaderValue::try_from(value).expect("a header value"));
    }
}

// ------------------------------------------------------- requests, refusals

/// A request as the endpoints see it: the raw (still percent-encoded) path.
struct Call {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    /// Reads the whole request.
    async fn read(req: Request) -> Self {
        let (parts, body) = req.into_parts();
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            headers: parts.headers,
            // An unreadable (or too large) body reads as empty.
            body: axum::body::to_bytes(body, BODY_LIMIT).await.unwrap_or_default(),
        }
    }

    /// Path segment `i` (from 0, after the leading `/`), percent-decoded:
    /// GitLab's `group%2Fapp` is one segment, `group/app`.
    fn segment(&self, i: usize) -> String {
        percent_decode(self.path.trim_start_matches('/').split('/').nth(i).unwrap_or_default(), false)
    }

    /// Header `name`, "" when absent or not text.
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The API root the client used, for the URLs in answers.
    fn root(&self) -> String {
        format!("http://{}", self.header("host"))
    }
}

/// Why a request is refused, and the answer.
struct Refusal {
    status: StatusCode,
    body: Value,
    why: String,
}

impl Refusal {
    /// `{"message": why}` with `status`.
    fn new(status: StatusCode, why: impl Into<String>) -> Self {
        let why = why.into();
        Refusal { status, body: json!({ "message": why }), why }
    }

    /// `body` with `status`.
    fn with_body(status: StatusCode, why: impl Into<String>, body: Value) -> Self {
        Refusal { status, body, why: why.into() }
    }

    /// Wrong or missing credentials.
    fn unauthorized(why: &str) -> Self {
        Refusal::with_body(StatusCode::UNAUTHORIZED, why, json!({ "message": "Bad credentials" }))
    }
}

/// An endpoint's answer: status and JSON body, or a refusal.
type Outcome = Result<(StatusCode, Value), Refusal>;

/// Extra headers of an answer (a listing's pagination).
type Headers = Vec<(&'static str, String)>;

/// A listing's answer: status, JSON body and pagination headers, or a
/// refusal.
type Paged = Result<(StatusCode, Value, Headers), Refusal>;

/// An answer without extra headers.
fn unpaged((status, body): (StatusCode, Value)) -> (StatusCode, Value, Headers) {
    (status, body, Vec::new())
}

/// The fields of a request: a JSON object, or query and form pairs (whose
/// values are strings).
struct Fields(Map<String, Value>);

impl Fields {
    /// A JSON body that must be an object; an empty body has no fields.
    fn json(body: &[u8]) -> Result<Fields, String> {
        if body.is_empty() {
            return Ok(Fields(Map::new()));
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(other) => Err(format!("the body must be a JSON object, not {other}")),
            Err(e) => Err(format!("Problems parsing JSON: {e}")),
        }
    }

    /// `a=1&b=two` pairs (a query string, or a form body).
    fn form(text: &str) -> Fields {
        let pairs = text.split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), Value::String(percent_decode(v, true)))
        });
        Fields(pairs.collect())
    }

    /// A string: `None` when absent or null.
    fn text(&self, key: &str) -> Result<Option<String>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be a string, not {other}")),
        }
    }

    /// A string that must be one of `allowed`.
    fn choice(&self, key: &str, allowed: &[&str]) -> Result<Option<String>, String> {
        match self.text(key)? {
            Some(s) if !allowed.contains(&s.as_str()) => Err(format!("`{key}` is {s:?}, not one of {allowed:?}")),
            v => Ok(v),
        }
    }

    /// A whole number given as a JSON number.
    fn number(&self, key: &str) -> Result<Option<u64>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
            Some(other) => Err(format!("`{key}` must be a whole number, not {other}")),
        }
    }

    /// A whole number given as a JSON number or as digits (GitLab coerces).
    fn whole(&self, key: &str) -> Result<Option<u64>, String> {
        match self.0.get(key) {
            Some(Value::String(s)) => s.parse().map(Some).map_err(|_| format!("{key} is invalid")),
            _ => self.number(key).map_err(|_| format!("{key} is invalid")),
        }
    }

    /// A number, whole or not (GitLab's `coverage`).
    fn float(&self, key: &str) -> Result<Option<f64>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => s.parse().map(Some).map_err(|_| format!("{key} is invalid")),
            Some(other) => Err(format!("{key} is invalid: {other}")),
        }
    }
}

/// `value`, which `key` requires.
fn required<T>(value: Option<T>, key: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("`{key}` is required"))
}

/// At most `max` characters.
fn at_most(value: Option<&str>, key: &str, max: usize) -> Result<(), String> {
    match value.map(|v| v.chars().count()) {
        Some(len) if len > max => Err(format!("`{key}` is too long ({len} characters; the maximum is {max})")),
        _ => Ok(()),
    }
}

/// An http or https URL.
fn web_url(value: Option<&str>, key: &str) -> Result<(), String> {
    match value {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            Err(format!("`{key}` {url:?} is not an http or https URL"))
        }
        _ => Ok(()),
    }
}

/// A full commit id: 40 lowercase hexadecimal digits.
fn is_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The credential of `Authorization: Bearer <token>` or `Authorization:
/// token <token>`.
fn credential_given(call: &Call) -> Option<&str> {
    let (scheme, given) = call.header("authorization").split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")).then(|| given.trim())
}

/// `Authorization: Bearer <token>` or `Authorization: token <token>`.
fn authorization_is(call: &Call, token: &str) -> bool {
    credential_given(call) == Some(token)
}

/// Why the credentials are refused: none, or the wrong ones.
fn credentials_missing(present: bool) -> &'static str {
    if present { "wrong credentials" } else { "no credentials" }
}

// ----------------------------------------------------------------- GitHub

/// GitHub's commit status states.
const GITHUB_STATES: &[&str] = &["error", "failure", "pending", "success"];
/// The check run statuses an app may set.
const CHECK_STATUSES: &[&str] = &["queued", "in_progress", "completed"];
/// The check run conclusions an app may set.
const CHECK_CONCLUSIONS: &[&str] =
    &["action_required", "cancelled", "failure", "neutral", "success", "skipped", "timed_out"];
/// Check run annotation levels.
const ANNOTATION_LEVELS: &[&str] = &["notice", "warning", "failure"];
/// The REST API versions GitHub serves (`X-GitHub-Api-Version`).
const GITHUB_API_VERSIONS: &[&str] = &["2022-11-28", "2026-03-10"];
/// GitHub's limit of statuses per commit and context.
const STATUSES_PER_CONTEXT: usize = 1000;

/// GitHub's validation failure (422).
fn github_invalid(why: String) -> Refusal {
    let body = json!({
        "message": "Validation Failed",
        "errors": [{ "code": "custom", "message": why }],
        "documentation_url": "https://docs.github.com/rest",
    });
    Refusal::with_body(StatusCode::UNPROCESSABLE_ENTITY, why, body)
}

/// What a GitHub repository endpoint is signed in with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Credential {
    /// The token given to [`ForgeApi::start`] (a personal access token).
    Static,
    /// An installation token granted to a GitHub App.
    Installation,
}

/// What every GitHub repository request needs: a `User-Agent` (else 403),
/// the static token or a valid installation token (else 401), GitHub's
/// media type in `Accept` (else 415) and, when given, a known API version
/// (else 400).
fn github_gate(ledger: &Ledger, call: &Call) -> Result<Credential, Refusal> {
    user_agent_gate(call)?;
    let credential = github_credential(ledger, call)?;
    media_gate(call)?;
    Ok(credential)
}

/// The gate of the check run endpoints: as [`github_gate`], and only an
/// installation token (GitHub's checks API is for apps: 403 otherwise).
fn checks_gate(ledger: &Ledger, call: &Call) -> Result<(), Refusal> {
    match github_gate(ledger, call)? {
        Credential::Installation => Ok(()),
        Credential::Static => {
            let text = "You must authenticate via a GitHub App.";
            let why = format!("the static token on the checks API: {text}");
            Err(Refusal::with_body(StatusCode::FORBIDDEN, why, json!({ "message": text })))
        }
    }
}

/// The reason recorded for a revoked installation token's use.
const REVOKED: &str = "a revoked installation token";

/// Who signs a repository request: the static token or an installation
/// token (revoked or expired: 401); a JWT, or anything else, is 401.
fn github_credential(ledger: &Ledger, call: &Call) -> Result<Credential, Refusal> {
    let given = credential_given(call).unwrap_or_default();
    if given == ledger.token {
        return Ok(Credential::Static);
    }
    if let Some(token) = ledger.installation_tokens.iter().find(|t| t.token == given) {
        return if token.revoked {
            Err(Refusal::unauthorized(REVOKED))
        } else if token.expires <= SystemTime::now() {
            Err(Refusal::unauthorized("an expired installation token"))
        } else {
            Ok(Credential::Installation)
        };
    }
    if !given.is_empty() && jsonwebtoken::decode_header(given).is_ok() {
        return Err(Refusal::unauthorized("an app's JWT on a repository endpoint (it takes an installation token)"));
    }
    Err(Refusal::unauthorized(credentials_missing(call.headers.contains_key("authorization"))))
}

/// A `User-Agent` (GitHub refuses requests without one, 403).
fn user_agent_gate(call: &Call) -> Result<(), Refusal> {
    if call.header("user-agent").trim().is_empty() {
        let text = "Request forbidden by administrative rules. Please make sure your request has a User-Agent header";
        return Err(Refusal::with_body(StatusCode::FORBIDDEN, "no User-Agent", json!({ "message": text })));
    }
    Ok(())
}

/// GitHub's media type in `Accept` (else 415) and, when given, a known API
/// version (else 400).
fn media_gate(call: &Call) -> Result<(), Refusal> {
    let accept = call.header("accept");
    if !accept.contains("application/vnd.github+json") {
        let why = format!("Accept {accept:?} lacks application/vnd.github+json");
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, why));
    }
    let version = call.header("x-github-api-version");
    if call.headers.contains_key("x-github-api-version") && !GITHUB_API_VERSIONS.contains(&version) {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, format!("API version '{version}' is not supported.")));
    }
    Ok(())
}

/// A GitHub JSON body: unparseable is 400, anything else wrong 422.
fn github_fields(call: &Call) -> Result<Fields, Refusal> {
    Fields::json(&call.body).map_err(|why| {
        if why.starts_with("Problems parsing JSON") {
            Refusal::new(StatusCode::BAD_REQUEST, why)
        } else {
            github_invalid(why)
        }
    })
}

/// A commit GitHub knows.
fn github_sha(sha: &str) -> Result<(), Refusal> {
    if is_sha(sha) { Ok(()) } else { Err(github_invalid(format!("No commit found for SHA: {sha}"))) }
}

/// `POST /repos/{owner}/{repo}/statuses/{sha}`.
fn github_status(ledger: &mut Ledger, call: &Call) -> Outcome {
    github_gate(ledger, call)?;
    let (project, sha) = (format!("{}/{}", call.segment(1), call.segment(2)), call.segment(4));
    github_sha(&sha)?;
    let fields = github_fields(call)?;
    let status = github_status_fields(&fields).map_err(github_invalid)?;
    let same = ledger.deliveries.iter().filter(|d| d.project == project && d.sha == sha && d.context == status.context);
    if same.count() >= STATUSES_PER_CONTEXT {
        let why = format!("This SHA and context has reached the maximum number of statuses ({STATUSES_PER_CONTEXT}).");
        return Err(github_invalid(why));
    }
    let stored = StoredStatus::new(ledger.next_id(), Forge::GitHub, &project, &sha, &status);
    let mut body = github_status_json(&stored, &call.root());
    body["creator"] = json!({ "login": "viaduct", "id": 1, "type": "User" });
    ledger.statuses.push(stored);
    ledger.deliveries.push(status.delivery(Forge::GitHub, project, sha));
    Ok((StatusCode::CREATED, body))
}

/// A commit status as GitHub answers it.
fn github_status_json(status: &StoredStatus, root: &str) -> Value {
    json!({
        "url": format!("{root}/repos/{}/statuses/{}", status.project, status.sha),
        "avatar_url": null,
        "id": status.id,
        "node_id": format!("SC_{}", status.id),
        "state": status.state,
        "description": status.description,
        "target_url": status.target_url,
        "context": status.context,
        "created_at": status.created_at,
        "updated_at": status.created_at,
    })
}

/// `GET /repos/{owner}/{repo}/commits/{sha}/status`: the combined status
/// of the commit (over the latest commit status of each context, check
/// runs aside) and, newest first, a page of those statuses (`per_page`,
/// 30 unless given, at most 100; `page` from 1; anything unreadable is
/// the default, as GitHub takes it). `total_count` counts every context;
/// a `Link` header names the other pages. Any ref other than a full sha
/// is 422, "No commit found".
fn github_combined(ledger: &Ledger, call: &Call) -> Paged {
    github_gate(ledger, call)?;
    let (owner, repo, sha) = (call.segment(1), call.segment(2), call.segment(4));
    let project = format!("{owner}/{repo}");
    github_sha(&sha)?;
    let query = Fields::form(&call.query);
    let page = Page::lenient(&query, "per_page", 30, 100);
    let latest = latest_statuses(ledger, Forge::GitHub, &project, &sha);
    let root = call.root();
    let statuses: Vec<Value> = page.of(&latest).iter().map(|s| github_status_json(s, &root)).collect();
    let url = format!("{root}/repos/{project}/commits/{sha}/status");
    let body = json!({
        "state": combined_state(latest.iter().map(|s| s.state.as_str())),
        "statuses": statuses,
        "sha": sha,
        "total_count": latest.len(),
        "repository": {
            "id": 1,
            "name": repo,
            "full_name": project,
            "owner": { "login": owner, "id": 1 },
            "private": true,
        },
        "commit_url": format!("{root}/repos/{project}/commits/{sha}"),
        "url": url,
    });
    let headers = link_header(&url, &call.query, page, latest.len(), false).map(|l| ("link", l));
    Ok((StatusCode::OK, body, headers.into_iter().collect()))
}

/// The latest status of each context of `sha` in `project` on `forge`,
/// newest first.
fn latest_statuses<'l>(ledger: &'l Ledger, forge: Forge, project: &str, sha: &str) -> Vec<&'l StoredStatus> {
    let mut contexts = HashSet::new();
    ledger
        .statuses
        .iter()
        .rev()
        .filter(|s| s.forge == forge && s.project == project && s.sha == sha)
        .filter(|s| contexts.insert(s.context.as_str()))
        .collect()
}

/// The combined state of some statuses, as GitHub (and recent Gitea)
/// computes it: `failure` if any failed or erred, else `pending` if any
/// is pending or there are none, else `success` (Gitea's `warning` counts
/// as a success).
fn combined_state<'s>(states: impl Iterator<Item = &'s str>) -> &'static str {
    let states: Vec<&str> = states.collect();
    if states.iter().any(|s| matches!(*s, "failure" | "error")) {
        "failure"
    } else if states.is_empty() || states.contains(&"pending") {
        "pending"
    } else {
        "success"
    }
}

/// A page of a listing: `number` from 1, `size` items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    number: usize,
    size: usize,
}

impl Page {
    /// `page` and `size_key` from `query`: absent, unreadable, zero or
    /// negative values are the defaults (page 1, `default` items); sizes
    /// over `max` are `max` (GitHub and Gitea take them so).
    fn lenient(query: &Fields, size_key: &str, default: usize, max: usize) -> Page {
        let read = |key: &str| query.text(key).ok().flatten().and_then(|v| v.trim().parse::<i64>().ok());
        Page::clamped(read("page"), read(size_key), default, max)
    }

    /// As [`Page::lenient`], but a `page` or `per_page` that is not an
    /// integer is an error (GitLab's parameter validation).
    fn strict(query: &Fields, default: usize, max: usize) -> Result<Page, String> {
        let read = |key: &str| match query.text(key).ok().flatten() {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| format!("{key} is invalid")),
        };
        Ok(Page::clamped(read("page")?, read("per_page")?, default, max))
    }

    /// The page `number` of `size` items, each in range.
    fn clamped(number: Option<i64>, size: Option<i64>, default: usize, max: usize) -> Page {
        let positive = |n: Option<i64>| n.and_then(|n| usize::try_from(n).ok()).filter(|n| *n > 0);
        Page { number: positive(number).unwrap_or(1), size: positive(size).unwrap_or(default).min(max) }
    }

    /// This page of `items` (empty past the end).
    fn of<T>(self, items: &[T]) -> &[T] {
        let start = (self.number - 1).saturating_mul(self.size).min(items.len());
        &items[start..start.saturating_add(self.size).min(items.len())]
    }

    /// The number of the last page of `total` items (1 when there are
    /// none).
    fn last(self, total: usize) -> usize {
        total.div_ceil(self.size).max(1)
    }
}

/// The `Link` header of page `page` of a `total`-item listing at `url`,
/// asked for with `query` (kept, but for `page` and `per_page`): `prev`,
/// `next`, `first` and `last` as they apply (GitHub: none on a listing of
/// one page), or always `first` and `last` (GitLab).
fn link_header(url: &str, query: &str, page: Page, total: usize, always_ends: bool) -> Option<String> {
    let last = page.last(total);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = percent_decode(pair.split('=').next().unwrap_or_default(), true);
            !pair.is_empty() && key != "page" && key != "per_page"
        })
        .collect();
    let at = |number: usize| {
        let mut pairs = kept.clone();
        let paging = format!("page={number}&per_page={}", page.size);
        pairs.push(&paging);
        format!("<{url}?{}>", pairs.join("&"))
    };
    let mut links = Vec::new();
    if page.number > 1 {
        links.push(format!("{}; rel=\"prev\"", at(page.number.min(last + 1) - 1)));
    }
    if page.number < last {
        links.push(format!("{}; rel=\"next\"", at(page.number + 1)));
    }
    if always_ends || page.number > 1 {
        links.push(format!("{}; rel=\"first\"", at(1)));
    }
    if always_ends || page.number < last {
        links.push(format!("{}; rel=\"last\"", at(last)));
    }
    (!links.is_empty()).then(|| links.join(", "))
}

/// A commit status's fields, checked.
struct StatusFields {
    state: String,
    context: String,
    description: Option<String>,
    target_url: Option<String>,
}

impl StatusFields {
    /// The delivery of this status.
    fn delivery(&self, forge: Forge, project: String, sha: String) -> Delivery {
        Delivery {
            context: self.context.clone(),
            state: self.state.clone(),
            description: self.description.clone().unwrap_or_default(),
            target_url: self.target_url.clone().unwrap_or_default(),
            ..blank_delivery(forge, project, sha)
        }
    }
}

/// A delivery with only its forge, project and commit.
fn blank_delivery(forge: Forge, project: String, sha: String) -> Delivery {
    Delivery {
        forge,
        project,
        sha,
        context: String::new(),
        state: String::new(),
        description: String::new(),
        target_url: String::new(),
        pipeline_id: None,
        check_run: None,
        conclusion: None,
        summary: None,
        annotations: Vec::new(),
        at: Instant::now(),
    }
}

/// GitHub's status fields: `state` required, `description` at most 140
/// characters, `target_url` a web URL, `context` "default" when absent.
fn github_status_fields(fields: &Fields) -> Result<StatusFields, String> {
    let state = required(fields.choice("state", GITHUB_STATES)?, "state")?;
    let description = fields.text("description")?;
    at_most(description.as_deref(), "description", 140)?;
    let target_url = fields.text("target_url")?;
    web_url(target_url.as_deref(), "target_url")?;
    let context = fields.text("context")?.unwrap_or_else(|| "default".into());
    Ok(StatusFields { state, context, description, target_url })
}

/// A check run's output.
#[derive(Clone)]
struct Output {
    title: String,
    summary: String,
    text: Option<String>,
    annotations: Vec<Value>,
}

/// What a check run request asks to set.
struct CheckRunFields {
    name: Option<String>,
    status: Option<String>,
    conclusion: Option<String>,
    details_url: Option<String>,
    external_id: Option<String>,
    started_at: Option<String>,
    completed_at: Option<String>,
    output: Option<Output>,
}

/// The fields of a check run request, each checked.
fn check_run_fields(fields: &Fields) -> Result<CheckRunFields, String> {
    let details_url = fields.text("details_url")?;
    web_url(details_url.as_deref(), "details_url")?;
    let started_at = fields.text("started_at")?;
    let completed_at = fields.text("completed_at")?;
    for (key, value) in [("started_at", &started_at), ("completed_at", &completed_at)] {
        if value.as_deref().is_some_and(|t| !is_timestamp(t)) {
            return Err(format!("`{key}` must be an ISO 8601 timestamp (YYYY-MM-DDTHH:MM:SSZ)"));
        }
    }
    match fields.0.get("actions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(actions)) if actions.len() <= 3 => {}
        Some(_) => return Err("`actions` must be an array of at most 3 actions".into()),
    }
    Ok(CheckRunFields {
        name: fields.text("name")?,
        status: fields.choice("status", CHECK_STATUSES)?,
        conclusion: fields.choice("conclusion", CHECK_CONCLUSIONS)?,
        details_url,
        external_id: fields.text("external_id")?,
        started_at,
        completed_at,
        output: fields.0.get("output").filter(|o| !o.is_null()).map(check_run_output).transpose()?,
    })
}

/// A check run's `output`: `title` and `summary` (at most 65535
/// characters) required, `text` (the same), at most 50 annotations.
fn check_run_output(output: &Value) -> Result<Output, String> {
    let fields = Fields(output.as_object().ok_or("`output` must be an object")?.clone());
    let title = required(fields.text("title")?, "output.title")?;
    let summary = required(fields.text("summary")?, "output.summary")?;
    at_most(Some(&summary), "output.summary", 65535)?;
    let text = fields.text("text")?;
    at_most(text.as_deref(), "output.text", 65535)?;
    let annotations = match fields.0.get("annotations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() <= 50 => list.clone(),
        Some(Value::Array(list)) => return Err(format!("{} annotations: at most 50 per request", list.len())),
        Some(_) => return Err("`output.annotations` must be an array".into()),
    };
    annotations.iter().try_for_each(check_annotation)?;
    Ok(Output { title, summary, text, annotations })
}

/// An annotation: `path`, `start_line`, `end_line`, `annotation_level`
/// and `message` required; columns only within one line.
fn check_annotation(annotation: &Value) -> Result<(), String> {
    let fields = Fields(annotation.as_object().ok_or("an annotation must be an object")?.clone());
    required(fields.text("path")?, "annotations[].path")?;
    required(fields.text("message")?, "annotations[].message")?;
    required(fields.choice("annotation_level", ANNOTATION_LEVELS)?, "annotations[].annotation_level")?;
    let start = required(fields.number("start_line")?, "annotations[].start_line")?;
    let end = required(fields.number("end_line")?, "annotations[].end_line")?;
    if start == 0 || end < start {
        return Err(format!("annotation lines {start}..{end} are not a range of lines from 1"));
    }
    let columns = [fields.number("start_column")?, fields.number("end_column")?];
    if columns.iter().any(Option::is_some) && start != end {
        return Err("annotation columns are only allowed when start_line equals end_line".into());
    }
    fields.text("title")?;
    fields.text("raw_details")?;
    Ok(())
}

/// The status and conclusion a check run has after `change`: a conclusion
/// means completed, completed needs a conclusion, and a completed run
/// stays completed.
fn check_run_next(was: Option<&StoredRun>, change: &CheckRunFields) -> Result<(String, Option<String>), String> {
    let status = match (&change.status, &change.conclusion) {
        (Some(status), Some(c)) if status != "completed" => {
            return Err(format!("`conclusion` {c:?} given with `status` {status:?} (a conclusion means completed)"));
        }
        (Some(status), _) => status.clone(),
        (None, Some(_)) => "completed".to_string(),
        (None, None) => was.map_or("queued".to_string(), |run| run.status.clone()),
    };
    if let Some(run) = was.filter(|run| run.status == "completed" && status != "completed") {
        return Err(format!("violation: check run {} is completed and may not go back to {status}", run.id));
    }
    let conclusion = change.conclusion.clone().or_else(|| was.and_then(|run| run.conclusion.clone()));
    if status == "completed" && conclusion.is_none() {
        return Err("`conclusion` is required when `status` is completed".into());
    }
    if change.completed_at.is_some() && conclusion.is_none() {
        return Err("`conclusion` is required with `completed_at`".into());
    }
    Ok((status, conclusion))
}

/// `POST /repos/{owner}/{repo}/check-runs`.
fn check_run_create(ledger: &mut Ledger, call: &Call) -> Outcome {
    checks_gate(ledger, call)?;
    let project = format!("{}/{}", call.segment(1), call.segment(2));
    let fields = github_fields(call)?;
    let head_sha = required(fields.text("head_sha").map_err(github_invalid)?, "head_sha").map_err(github_invalid)?;
    github_sha(&head_sha)?;
    let change = check_run_fields(&fields).map_err(github_invalid)?;
    let name = change.name.clone().filter(|n| !n.trim().is_empty());
    let name = required(name, "name").map_err(github_invalid)?;
    let (status, conclusion) = check_run_next(None, &change).map_err(github_invalid)?;
    let now = timestamp(SystemTime::now());
    let completed_at = (status == "completed").then(|| change.completed_at.clone().unwrap_or_else(|| now.clone()));
    let run = StoredRun {
        id: ledger.next_id(),
        project,
        name,
        head_sha,
        status,
        conclusion,
        details_url: change.details_url.clone(),
        external_id: change.external_id.clone(),
        output: change.output.clone(),
        annotations: change.output.as_ref().map(|o| o.annotations.clone()).unwrap_or_default(),
        started_at: change.started_at.clone().unwrap_or(now),
        completed_at,
    };
    ledger.deliveries.push(check_run_delivery(&run, &change));
    let body = check_run_json(&run, &call.root());
    ledger.check_runs.push(run);
    Ok((StatusCode::CREATED, body))
}

/// `PATCH /repos/{owner}/{repo}/check-runs/{id}`.
fn check_run_update(ledger: &mut Ledger, call: &Call) -> Outcome {
    checks_gate(ledger, call)?;
    let project = format!("{}/{}", call.segment(1), call.segment(2));
    let id: Option<u64> = call.segment(4).parse().ok();
    let Some(at) = ledger.check_runs.iter().position(|r| Some(r.id) == id && r.project == project) else {
        return Err(Refusal::new(StatusCode::NOT_FOUND, format!("no check run {} in {project}", call.segment(4))));
    };
    let fields = github_fields(call)?;
    let change = check_run_fields(&fields).map_err(github_invalid)?;
    let (status, conclusion) = check_run_next(Some(&ledger.check_runs[at]), &change).map_err(github_invalid)?;
    let run = &mut ledger.check_runs[at];
    if let Some(name) = change.name.clone().filter(|n| !n.trim().is_empty()) {
        run.name = name;
    }
    if status == "completed" && run.completed_at.is_none() {
        run.completed_at = Some(change.completed_at.clone().unwrap_or_else(|| timestamp(SystemTime::now())));
    }
    (run.status, run.conclusion) = (status, conclusion);
    run.details_url = change.details_url.clone().or(run.details_url.take());
    run.external_id = change.external_id.clone().or(run.external_id.take());
    if let Some(output) = &change.output {
        run.annotations.extend(output.annotations.iter().cloned());
        run.output = Some(output.clone());
    }
    let delivery = check_run_delivery(run, &change);
    let body = check_run_json(run, &call.root());
    ledger.deliveries.push(delivery);
    Ok((StatusCode::OK, body))
}

/// The delivery of a check run request: the run as it now stands, with
/// the output sent.
fn check_run_delivery(run: &StoredRun, change: &CheckRunFields) -> Delivery {
    let output = change.output.as_ref();
    Delivery {
        context: run.name.clone(),
        state: run.status.clone(),
        description: output.map(|o| o.title.clone()).unwrap_or_default(),
        target_url: run.details_url.clone().unwrap_or_default(),
        check_run: Some(run.id),
        conclusion: run.conclusion.clone(),
        summary: output.map(|o| o.summary.clone()),
        annotations: output.map(|o| o.annotations.clone()).unwrap_or_default(),
        ..blank_delivery(Forge::GitHub, run.project.clone(), run.head_sha.clone())
    }
}

/// A check run as GitHub answers it.
fn check_run_json(run: &StoredRun, root: &str) -> Value {
    let output = run.output.as_ref();
    json!({
        "id": run.id,
        "node_id": format!("CR_{}", run.id),
        "head_sha": run.head_sha,
        "external_id": run.external_id,
        "url": format!("{root}/repos/{}/check-runs/{}", run.project, run.id),
        "html_url": format!("{root}/{}/runs/{}", run.project, run.id),
        "details_url": run.details_url,
        "status": run.status,
        "conclusion": run.conclusion,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "name": run.name,
        "output": {
            "title": output.map(|o| &o.title),
            "summary": output.map(|o| &o.summary),
            "text": output.and_then(|o| o.text.as_ref()),
            "annotations_count": run.annotations.len(),
            "annotations_url": format!("{root}/repos/{}/check-runs/{}/annotations", run.project, run.id),
        },
        "pull_requests": [],
    })
}

// ------------------------------------------------------ GitHub deployments

/// GitHub's deployment status states.
const GITHUB_DEPLOYMENT_STATES: &[&str] =
    &["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];

impl Fields {
    /// A JSON boolean (GitHub takes no other).
    fn boolean(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!("`{key}` must be a boolean, not {other}")),
        }
    }
}

/// GitHub's refusal (409) of a deployment it cannot make.
fn github_conflict(why: String, body: Value) -> Refusal {
    Refusal::with_body(StatusCode::CONFLICT, why, body)
}

/// `POST /repos/{owner}/{repo}/deployments`: `ref` required — a full commit
/// sha here (this forge has no branches or tags to resolve; GitHub answers
/// "No ref found" for a ref it cannot resolve); `environment` not blank
/// ("production" when absent); `auto_merge` false (true is GitHub's default,
/// and would merge the default branch into the ref: there is none to merge
/// here); `required_contexts` an array of strings, each of which must have
/// a successful latest commit status — all the commit's contexts when it is
/// absent, none when empty (else 409, as GitHub's "Commit status checks
/// failed"); `payload` an object or a JSON string; `task`, `description`
/// strings; `transient_environment`, `production_environment` booleans.
fn deployment_create(ledger: &mut Ledger, call: &Call) -> Outcome {
    github_gate(ledger, call)?;
    let project = format!("{}/{}", call.segment(1), call.segment(2));
    let fields = github_fields(call)?;
    let git_ref = fields.text("ref").map_err(github_invalid)?;
    let git_ref = required(git_ref, "ref").map_err(github_invalid)?;
    if !is_sha(&git_ref) {
        return Err(github_invalid(format!("No ref found for: {git_ref}")));
    }
    let environment = fields.text("environment").map_err(github_invalid)?.unwrap_or_else(|| "production".into());
    if environment.trim().is_empty() {
        return Err(github_invalid("`environment` must not be blank".into()));
    }
    let task = fields.text("task").map_err(github_invalid)?.unwrap_or_else(|| "deploy".into());
    let description = fields.text("description").map_err(github_invalid)?;
    let payload = match fields.0.get("payload") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => v,
            _ if text.is_empty() => Value::Null,
            _ => return Err(github_invalid("`payload` must be an object or a JSON text of one".into())),
        },
        Some(other) => return Err(github_invalid(format!("`payload` must be an object, not {other}"))),
    };
    let production_environment = fields.boolean("production_environment").map_err(github_invalid)?;
    fields.boolean("transient_environment").map_err(github_invalid)?;
    if fields.boolean("auto_merge").map_err(github_invalid)? != Some(false) {
        let why = format!(
            "`auto_merge` is not false: GitHub would merge the default branch into {git_ref}, and this forge has \
             no repository to merge in"
        );
        return Err(github_conflict(why.clone(), json!({ "message": why })));
    }
    let required_contexts = match fields.0.get("required_contexts") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| github_invalid("`required_contexts` must be an array of strings".into()))?,
        ),
        Some(other) => return Err(github_invalid(format!("`required_contexts` must be an array, not {other}"))),
    };
    // GitHub checks the commit's statuses first: all its contexts unless told which.
    let latest = latest_statuses(ledger, Forge::GitHub, &project, &git_ref);
    let required = required_contexts.unwrap_or_else(|| latest.iter().map(|s| s.context.clone()).collect());
    let failing: Vec<&String> =
        required.iter().filter(|c| !latest.iter().any(|s| &s.context == *c && s.state == "success")).collect();
    if !failing.is_empty() {
        let message = format!("Conflict: Commit status checks failed for {git_ref}.");
        let body = json!({
            "message": message,
            "errors": [{ "contexts": failing, "resource": "Deployment", "field": "required_contexts" }],
        });
        return Err(github_conflict(format!("{message} Failing: {failing:?}"), body));
    }
    let deployment = Deployment {
        forge: Forge::GitHub,
        id: ledger.next_id(),
        project,
        sha: git_ref.clone(),
        git_ref,
        environment,
        task,
        description: description.unwrap_or_default(),
        payload,
        production_environment,
        tag: None,
        status: String::new(),
        statuses: Vec::new(),
    };
    let body = github_deployment_json(&deployment, &call.root());
    ledger.deployments.push(deployment);
    Ok((StatusCode::CREATED, body))
}

/// A deployment as GitHub answers it.
fn github_deployment_json(d: &Deployment, root: &str) -> Value {
    let url = format!("{root}/repos/{}/deployments/{}", d.project, d.id);
    json!({
        "url": url,
        "id": d.id,
        "node_id": format!("DE_{}", d.id),
        "sha": d.sha,
        "ref": d.git_ref,
        "task": d.task,
        "payload": if d.payload.is_null() { json!({}) } else { d.payload.clone() },
        "original_environment": d.environment,
        "environment": d.environment,
        "description": d.description,
        "creator": { "login": "viaduct", "id": 1, "type": "User" },
        "statuses_url": format!("{url}/statuses"),
        "repository_url": format!("{root}/repos/{}", d.project),
        "production_environment": d.production_environment.unwrap_or(d.environment == "production"),
    })
}

/// `GET /repos/{owner}/{repo}/deployments`: newest first, filtered by
/// `sha`, `ref`, `task` and `environment` (each when given), a page of them
/// (`per_page`, 30 unless given, at most 100; `page` from 1) with a `Link`
/// header naming the other pages.
fn deployment_list(ledger: &Ledger, call: &Call) -> Paged {
    github_gate(ledger, call)?;
    let project = format!("{}/{}", call.segment(1), call.segment(2));
    let query = Fields::form(&call.query);
    let given = |key: &str| query.text(key).ok().flatten().filter(|v| !v.is_empty());
    let (sha, git_ref, task, environment) = (given("sha"), given("ref"), given("task"), given("environment"));
    let page = Page::lenient(&query, "per_page", 30, 100);
    let listed: Vec<&Deployment> = ledger
        .deployments
        .iter()
        .rev()
        .filter(|d| d.forge == Forge::GitHub && d.project == project)
        .filter(|d| sha.as_ref().is_none_or(|s| *s == d.sha))
        .filter(|d| git_ref.as_ref().is_none_or(|r| *r == d.git_ref))
        .filter(|d| task.as_ref().is_none_or(|t| *t == d.task))
        .filter(|d| environment.as_ref().is_none_or(|e| *e == d.environment))
        .collect();
    let root = call.root();
    let body: Vec<Value> = page.of(&listed).iter().map(|d| github_deployment_json(d, &root)).collect();
    let url = format!("{root}/repos/{project}/deployments");
    let headers = link_header(&url, &call.query, page, listed.len(), false).map(|l| ("link", l));
    Ok((StatusCode::OK, Value::Array(body), headers.into_iter().collect()))
}

/// `POST /repos/{owner}/{repo}/deployments/{id}/statuses`: the deployment
/// must be this repository's (else 404); `state` required, one of GitHub's
/// words; `description` at most 140 characters; `log_url`, `target_url`
/// and `environment_url` web URLs; `environment` (which moves the
/// deployment) a string; `auto_inactive` a boolean.
fn deployment_status_create(ledger: &mut Ledger, call: &Call) -> Outcome {
    github_gate(ledger, call)?;
    let project = format!("{}/{}", call.segment(1), call.segment(2));
    let id: Option<u64> = call.segment(4).parse().ok();
    let Some(at) =
        ledger.deployments.iter().position(|d| d.forge == Forge::GitHub && Some(d.id) == id && d.project == project)
    else {
        let why = format!("no deployment {} in {project}", call.segment(4));
        return Err(Refusal::with_body(StatusCode::NOT_FOUND, why, json!({ "message": "Not Found" })));
    };
    let fields = github_fields(call)?;
    let state = fields.choice("state", GITHUB_DEPLOYMENT_STATES).map_err(github_invalid)?;
    let state = required(state, "state").map_err(github_invalid)?;
    let description = fields.text("description").map_err(github_invalid)?;
    at_most(description.as_deref(), "description", 140).map_err(github_invalid)?;
    let mut urls = Vec::new();
    for key in ["log_url", "target_url", "environment_url"] {
        let url = fields.text(key).map_err(github_invalid)?;
        web_url(url.as_deref(), key).map_err(github_invalid)?;
        urls.push(url);
    }
    let environment = fields.text("environment").map_err(github_invalid)?;
    fields.boolean("auto_inactive").map_err(github_invalid)?;
    let [log_url, target_url, environment_url] = <[Option<String>; 3]>::try_from(urls).expect("three URLs");
    let status = DeploymentStatus {
        id: ledger.next_id(),
        state,
        description: description.unwrap_or_default(),
        // Setting `log_url` sets `target_url` too, and the other way round.
        log_url: log_url.or(target_url).unwrap_or_default(),
        environment_url: environment_url.unwrap_or_default(),
        created_at: timestamp(SystemTime::now()),
    };
    let deployment = &mut ledger.deployments[at];
    if let Some(env) = environment.filter(|e| !e.trim().is_empty()) {
        deployment.environment = env;
    }
    deployment.status.clone_from(&status.state);
    deployment.statuses.push(status.clone());
    let root = call.root();
    let deployment_url = format!("{root}/repos/{}/deployments/{}", deployment.project, deployment.id);
    let body = json!({
        "url": format!("{deployment_url}/statuses/{}", status.id),
        "id": status.id,
        "node_id": format!("DES_{}", status.id),
        "state": status.state,
        "creator": { "login": "viaduct", "id": 1, "type": "User" },
        "description": status.description,
        "environment": deployment.environment,
        "target_url": status.log_url,
        "log_url": status.log_url,
        "environment_url": status.environment_url,
        "created_at": status.created_at,
        "updated_at": status.created_at,
        "deployment_url": deployment_url,
        "repository_url": format!("{root}/repos/{}", deployment.project),
    });
    Ok((StatusCode::CREATED, body))
}

// ------------------------------------------------------------ GitHub Apps

/// GitHub's answer to a JWT it cannot take.
const UNDECODABLE: &str = "A JSON web token could not be decoded";
/// The longest a JWT may live (`exp - iat`).
const JWT_LIFETIME_MAX_S: i64 = 600;
/// How far in the future `iat` may be (clock drift).
const JWT_IAT_DRIFT_S: i64 = 60;
/// How long an installation token is valid.
const INSTALLATION_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A JWT refused: 401 with GitHub's `message`, recording `why` too.
fn jwt_refused(message: &str, why: impl std::fmt::Display) -> Refusal {
    let body = json!({ "message": message, "documentation_url": "https://docs.github.com/rest" });
    Refusal::with_body(StatusCode::UNAUTHORIZED, format!("JWT: {message} ({why})"), body)
}

/// What the app endpoints need: a `User-Agent`, a valid JWT of a
/// registered app (its id), GitHub's media type.
fn jwt_gate<'l>(ledger: &'l Ledger, call: &Call) -> Result<&'l App, Refusal> {
    user_agent_gate(call)?;
    let app = verify_jwt(ledger, call)?;
    media_gate(call)?;
    Ok(app)
}

/// A validation that checks the signature (unless told not to) and
/// nothing else: the claims are checked by [`verify_jwt`], as GitHub does.
fn jwt_validation() -> jsonwebtoken::Validation {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation
}

/// `Authorization: Bearer <JWT>`, checked as GitHub does: RS256, signed
/// with the key of the app `iss` names (a number, or digits in a string),
/// integer `iat` and `exp`, `exp` not past, at most 10 minutes after
/// `iat`, and `iat` at most a minute ahead. The app signed in.
fn verify_jwt<'l>(ledger: &'l Ledger, call: &Call) -> Result<&'l App, Refusal> {
    let token = match call.header("authorization").split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(jwt_refused(UNDECODABLE, "no `Authorization: Bearer <JWT>`")),
    };
    let header = jsonwebtoken::decode_header(token).map_err(|e| jwt_refused(UNDECODABLE, e))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err(jwt_refused(UNDECODABLE, format!("algorithm {:?}, not RS256", header.alg)));
    }
    let mut unverified = jwt_validation();
    unverified.insecure_disable_signature_validation();
    let claims = jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_secret(&[]), &unverified)
        .map_err(|e| jwt_refused(UNDECODABLE, e))?
        .claims;
    let iss = match &claims["iss"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let Some(iss) = iss else {
        return Err(jwt_refused("'Issuer' claim ('iss') must be an Integer", format!("iss is {}", claims["iss"])));
    };
    let Some(app) = ledger.apps.iter().find(|app| app.id == iss) else {
        return Err(jwt_refused(UNDECODABLE, format!("no app {iss}")));
    };
    jsonwebtoken::decode::<Value>(token, &app.key, &jwt_validation())
        .map_err(|e| jwt_refused(UNDECODABLE, format!("the signature does not verify with app {iss}'s key: {e}")))?;
    let Some(iat) = claims["iat"].as_i64() else {
        let message =
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
        return Err(jwt_refused(message, format!("iat is {}", claims["iat"])));
    };
    let past = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
    let Some(exp) = claims["exp"].as_i64() else {
        return Err(jwt_refused(past, format!("exp is {}", claims["exp"])));
    };
    let now = i64::try_from(epoch_seconds(SystemTime::now())).unwrap_or(i64::MAX);
    if exp < now {
        return Err(jwt_refused(past, format!("exp is {} s in the past", now - exp)));
    }
    if exp.saturating_sub(iat) > JWT_LIFETIME_MAX_S {
        let why = format!("exp - iat is {} s, more than {JWT_LIFETIME_MAX_S}", exp.saturating_sub(iat));
        return Err(jwt_refused("'Expiration time' claim ('exp') is too far in the future", why));
    }
    if iat > now + JWT_IAT_DRIFT_S {
        let message =
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
        return Err(jwt_refused(message, format!("iat is {} s in the future", iat - now)));
    }
    Ok(app)
}

/// `GET /repos/{owner}/{repo}/installation`: the app's installation
/// (every app is installed on every repository).
fn app_installation(ledger: &Ledger, call: &Call) -> Outcome {
    let app = jwt_gate(ledger, call)?;
    let owner = call.segment(1);
    let root = call.root();
    let now = timestamp(SystemTime::now());
    let body = json!({
        "id": app.installation,
        "app_id": app.id,
        "app_slug": "viaduct",
        "client_id": format!("Iv1.{:016x}", app.id),
        "target_id": 1,
        "target_type": "Organization",
        "account": { "login": owner, "id": 1, "type": "Organization" },
        "repository_selection": "all",
        "access_tokens_url": format!("{root}/app/installations/{}/access_tokens", app.installation),
        "repositories_url": format!("{root}/installation/repositories"),
        "html_url": format!("{root}/organizations/{owner}/settings/installations/{}", app.installation),
        "permissions": { "checks": "write", "statuses": "write", "metadata": "read" },
        "events": ["check_run", "check_suite", "push"],
        "created_at": now,
        "updated_at": now,
        "single_file_name": null,
        "suspended_at": null,
        "suspended_by": null,
    });
    Ok((StatusCode::OK, body))
}

/// `POST /app/installations/{id}/access_tokens`: a new installation token,
/// valid an hour, if the installation is the signed-in app's (else 404).
fn access_token(ledger: &mut Ledger, call: &Call) -> Outcome {
    let app = jwt_gate(ledger, call)?;
    let (app_id, installation) = (app.id, app.installation);
    if call.segment(2).parse() != Ok(installation) {
        let why = format!("no installation {} of app {app_id}", call.segment(2));
        return Err(Refusal::with_body(StatusCode::NOT_FOUND, why, json!({ "message": "Not Found" })));
    }
    github_fields(call)?;
    let token = format!("ghs_{}", random_hex(36));
    let expires = SystemTime::now() + INSTALLATION_TOKEN_TTL;
    ledger.installation_tokens.push(InstallationToken { token: token.clone(), expires, revoked: false });
    let body = json!({
        "token": token,
        "expires_at": timestamp(expires),
        "permissions": { "checks": "write", "statuses": "write" },
        "repository_selection": "all",
    });
    Ok((StatusCode::CREATED, body))
}

/// `len` random lowercase hexadecimal digits (not for cryptography: the
/// standard library's randomly keyed hasher).
fn random_hex(len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        let n = RandomState::new().hash_one((SystemTime::now(), out.len()));
        out.push_str(&format!("{n:016x}"));
    }
    out.truncate(len);
    out
}

// ----------------------------------------------------------------- GitLab

/// GitLab's commit status states.
const GITLAB_STATES: &[&str] = &["pending", "running", "success", "failed", "canceled", "skipped"];

/// GitLab's refusal (400) of a bad parameter.
fn gitlab_invalid(why: String) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, why)
}

/// GitLab's refusal (400) of a record that does not validate:
/// `{"message": {"field": ["problem"]}}`.
fn gitlab_record_invalid(field: &str, problem: &str) -> Refusal {
    let body = json!({ "message": { field: [problem] } });
    Refusal::with_body(StatusCode::BAD_REQUEST, format!("{field} {problem}"), body)
}

/// `PRIVATE-TOKEN: <token>` (or `Authorization: Bearer <token>`).
fn gitlab_auth(ledger: &Ledger, call: &Call) -> Result<(), Refusal> {
    let private = call.header("private-token") == ledger.token;
    let bearer = call.header("authorization").strip_prefix("Bearer ") == Some(ledger.token.as_str());
    if private || bearer {
        return Ok(());
    }
    let present = call.headers.contains_key("private-token") || call.headers.contains_key("authorization");
    Err(Refusal::unauthorized(credentials_missing(present)))
}

/// GitLab's parameters: the query string, then the body (JSON or a form)
/// over it.
fn gitlab_fields(call: &Call) -> Result<Fields, Refusal> {
    let mut fields = Fields::form(&call.query);
    if call.body.is_empty() {
        return Ok(fields);
    }
    let content_type = call.header("content-type");
    let body = if content_type.contains("json") {
        Fields::json(&call.body).map_err(gitlab_invalid)?
    } else if content_type.contains("application/x-www-form-urlencoded") {
        Fields::form(&String::from_utf8_lossy(&call.body))
    } else {
        let why = format!("The provided content-type '{content_type}' is not supported.");
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, why));
    };
    fields.0.extend(body.0);
    Ok(fields)
}

/// What a GitLab status request asks for, checked.
struct GitLabFields {
    status: StatusFields,
    git_ref: Option<String>,
    pipeline_id: Option<u64>,
}

/// GitLab's status parameters: `state` required; `name` (or `context`,
/// "default" when both are absent) not blank; `description` and
/// `target_url` at most 255 characters, the URL http or https;
/// `pipeline_id` a whole number.
fn gitlab_status_fields(fields: &Fields) -> Result<GitLabFields, Refusal> {
    let state =
        fields.text("state").map_err(gitlab_invalid)?.ok_or_else(|| gitlab_invalid("state is missing".into()))?;
    if !GITLAB_STATES.contains(&state.as_str()) {
        return Err(gitlab_invalid(format!("state does not have a valid value ({state:?})")));
    }
    let name = fields.text("name").map_err(gitlab_invalid)?;
    let context = name.or(fields.text("context").map_err(gitlab_invalid)?).unwrap_or_else(|| "default".into());
    if context.trim().is_empty() {
        return Err(gitlab_record_invalid("name", "can't be blank"));
    }
    let description = fields.text("description").map_err(gitlab_invalid)?;
    if at_most(description.as_deref(), "description", 255).is_err() {
        return Err(gitlab_record_invalid("description", "is too long (maximum is 255 characters)"));
    }
    let target_url = fields.text("target_url").map_err(gitlab_invalid)?;
    if web_url(target_url.as_deref(), "target_url").is_err() {
        return Err(gitlab_record_invalid("target_url", "is blocked: Only allowed schemes are http, https"));
    }
    if at_most(target_url.as_deref(), "target_url", 255).is_err() {
        return Err(gitlab_record_invalid("target_url", "is too long (maximum is 255 characters)"));
    }
    fields.float("coverage").map_err(gitlab_invalid)?;
    Ok(GitLabFields {
        status: StatusFields { state, context, description, target_url },
        git_ref: fields.text("ref").map_err(gitlab_invalid)?,
        pipeline_id: fields.whole("pipeline_id").map_err(gitlab_invalid)?,
    })
}

/// `POST /api/v4/projects/{id}/statuses/{sha}`: the status becomes (or
/// moves) a job of the given pipeline, or of the newest pipeline of the
/// commit (created when there is none).
fn gitlab_status(ledger: &mut Ledger, call: &Call) -> Outcome {
    gitlab_auth(ledger, call)?;
    let (project, sha) = (call.segment(3), call.segment(5));
    if project.is_empty() {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Project Not Found"));
    }
    if !is_sha(&sha) {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Commit Not Found"));
    }
    let asked = gitlab_status_fields(&gitlab_fields(call)?)?;
    let pipeline = gitlab_pipeline(ledger, &project, &sha, &asked)?;
    let git_ref = asked.git_ref.clone().unwrap_or_else(|| pipeline.git_ref.clone());
    let mut job = gitlab_job(ledger, &pipeline, &git_ref, &asked.status.context);
    job.status = gitlab_transition(&job.status, &asked.status.state).map_err(gitlab_invalid)?;
    job.description = asked.status.description.clone().or(job.description);
    job.target_url = asked.status.target_url.clone().or(job.target_url);
    match ledger.jobs.iter_mut().find(|j| j.id == job.id) {
        Some(stored) => *stored = job.clone(),
        None => ledger.jobs.push(job.clone()),
    }
    let delivery = Delivery { pipeline_id: Some(pipeline.id), ..asked.status.delivery(Forge::GitLab, project, sha) };
    ledger.deliveries.push(delivery);
    Ok((StatusCode::CREATED, gitlab_job_json(&job, &pipeline)))
}

/// The pipeline a status goes to: `pipeline_id`'s, which must be of this
/// commit (and ref, when given); else the newest of the commit (and ref),
/// else a new one.
fn gitlab_pipeline(ledger: &mut Ledger, project: &str, sha: &str, asked: &GitLabFields) -> Result<Pipeline, Refusal> {
    let matching = ledger.pipelines.iter().rev().find(|p| {
        p.project == project
            && p.sha == sha
            && asked.git_ref.as_ref().is_none_or(|r| *r == p.git_ref)
            && asked.pipeline_id.is_none_or(|id| id == p.id)
    });
    if let Some(pipeline) = matching {
        return Ok(pipeline.clone());
    }
    if asked.pipeline_id.is_some() {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Pipeline for pipeline_id, sha and ref Not Found"));
    }
    // GitLab takes the first branch holding the commit; this forge has no
    // repository, so "main".
    let git_ref = asked.git_ref.clone().unwrap_or_else(|| "main".into());
    let pipeline = Pipeline { id: ledger.next_id(), project: project.into(), sha: sha.into(), git_ref };
    ledger.pipelines.push(pipeline.clone());
    Ok(pipeline)
}

/// The job a status updates: the pipeline's pending or running job of
/// that name and ref, else a new one (`created`). A finished job is never
/// updated: a status after it starts a new job, as a retry does.
fn gitlab_job(ledger: &mut Ledger, pipeline: &Pipeline, git_ref: &str, name: &str) -> Job {
    let open = ledger.jobs.iter().rev().find(|j| {
        j.pipeline == pipeline.id
            && j.git_ref == git_ref
            && j.name == name
            && ["pending", "running"].contains(&&*j.status)
    });
    if let Some(job) = open {
        return job.clone();
    }
    Job {
        id: ledger.next_id(),
        pipeline: pipeline.id,
        git_ref: git_ref.into(),
        name: name.into(),
        status: "created".into(),
        description: None,
        target_url: None,
        created_at: timestamp(SystemTime::now()),
    }
}

/// GitLab's job state machine, as its commit status service drives it:
/// the state a job in `from` goes to on status `to`, or GitLab's message.
fn gitlab_transition(from: &str, to: &str) -> Result<String, String> {
    let (event, from_states): (&str, &[&str]) = match to {
        "pending" => ("enqueue", &["created"]),
        // `enqueue` (ignored when it cannot), then `run!`.
        "running" => ("run", &["created", "pending"]),
        "success" => ("success", &["created", "pending", "running"]),
        "failed" => ("drop", &["created", "pending", "running"]),
        "canceled" => ("cancel", &["created", "pending", "running"]),
        "skipped" => ("skip", &["created", "pending"]),
        _ => return Err("invalid state".into()),
    };
    if from_states.contains(&from) {
        Ok(to.to_string())
    } else {
        Err(format!(
            "Cannot transition status via :{event} from :{from} (Reason(s): Status cannot transition via \"{event}\")"
        ))
    }
}

/// A job as GitLab answers a status.
fn gitlab_job_json(job: &Job, pipeline: &Pipeline) -> Value {
    let now = timestamp(SystemTime::now());
    let finished = ["success", "failed", "canceled", "skipped"].contains(&job.status.as_str());
    json!({
        "id": job.id,
        "sha": pipeline.sha,
        "ref": job.git_ref,
        "status": job.status,
        "name": job.name,
        "target_url": job.target_url,
        "description": job.description,
        "created_at": job.created_at,
        "started_at": (job.status != "pending").then(|| now.clone()),
        "finished_at": finished.then_some(now),
        "allow_failure": false,
        "coverage": null,
        "pipeline_id": pipeline.id,
        "author": { "id": 1, "username": "viaduct", "name": "Viaduct", "state": "active" },
    })
}

/// GitLab's refusal (400) of a parameter that does not validate:
/// `{"error": why}`.
fn gitlab_param_invalid(why: String) -> Refusal {
    Refusal::with_body(StatusCode::BAD_REQUEST, why.clone(), json!({ "error": why }))
}

/// GitLab's `to_boolean`: `true`, `t`, `yes`, `y`, `1` and `on` (in any
/// case) are true; anything else is not.
fn gitlab_true(value: &str) -> bool {
    ["true", "t", "yes", "y", "1", "on"].iter().any(|t| value.trim().eq_ignore_ascii_case(t))
}

/// `GET /api/v4/projects/{id}/repository/commits/{sha}/statuses`: the
/// jobs external statuses made in the commit's pipelines of the project;
/// only the latest of each name in each pipeline (not retried), unless
/// `all` is true. Filters `ref`, `stage` (always `external`), `name` and
/// `pipeline_id`; ordered by `order_by` (`id` or `pipeline_id`, `id`
/// unless given) and `sort` (`asc` unless given); paginated by `per_page`
/// (20 unless given, at most 100) and `page` (from 1), with GitLab's
/// `X-Page`, `X-Per-Page`, `X-Total`, `X-Total-Pages`, `X-Next-Page`,
/// `X-Prev-Page` and `Link` headers. A sha not of 40 hex digits is 404
/// (no such commit); a parameter that does not validate 400.
fn gitlab_statuses(ledger: &Ledger, call: &Call) -> Paged {
    gitlab_auth(ledger, call)?;
    let (project, sha) = (call.segment(3), call.segment(6));
    if project.is_empty() {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Project Not Found"));
    }
    if !is_sha(&sha) {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Commit Not Found"));
    }
    let query = Fields::form(&call.query);
    // Query values are strings; an empty one filters nothing (`present?`).
    let given = |key: &str| query.text(key).ok().flatten().filter(|v| !v.is_empty());
    let all = given("all").is_some_and(|v| gitlab_true(&v));
    let pipeline_id = query.whole("pipeline_id").map_err(gitlab_param_invalid)?;
    let choice = |key: &str, allowed: &[&str]| match given(key) {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(gitlab_param_invalid(format!("{key} does not have a valid value")))
        }
        v => Ok(v),
    };
    let by_pipeline = choice("order_by", &["id", "pipeline_id"])?.is_some_and(|v| v == "pipeline_id");
    let descending = choice("sort", &["asc", "desc"])?.is_some_and(|v| v == "desc");
    let page = Page::strict(&query, 20, 100).map_err(gitlab_param_invalid)?;
    let (git_ref, stage, name) = (given("ref"), given("stage"), given("name"));
    let pipelines: Vec<&Pipeline> = ledger.pipelines.iter().filter(|p| p.project == project && p.sha == sha).collect();
    let retried =
        |job: &Job| ledger.jobs.iter().any(|j| j.pipeline == job.pipeline && j.name == job.name && j.id > job.id);
    let mut jobs: Vec<(&Job, &Pipeline)> = ledger
        .jobs
        .iter()
        .filter_map(|job| Some((job, *pipelines.iter().find(|p| p.id == job.pipeline)?)))
        .filter(|(job, _)| all || !retried(job))
        .filter(|(job, _)| git_ref.as_ref().is_none_or(|r| *r == job.git_ref))
        .filter(|_| stage.as_ref().is_none_or(|s| s == "external"))
        .filter(|(job, _)| name.as_ref().is_none_or(|n| *n == job.name))
        .filter(|(job, _)| pipeline_id.is_none_or(|id| id == job.pipeline))
        .collect();
    jobs.sort_by_key(|(job, _)| if by_pipeline { (job.pipeline, job.id) } else { (job.id, 0) });
    if descending {
        jobs.reverse();
    }
    let body: Vec<Value> = page.of(&jobs).iter().map(|(job, pipeline)| gitlab_job_json(job, pipeline)).collect();
    let (total, last) = (jobs.len(), page.last(jobs.len()));
    let url = format!("{}{}", call.root(), call.path);
    let mut headers: Headers = vec![
        ("x-page", page.number.to_string()),
        ("x-per-page", page.size.to_string()),
        ("x-total", total.to_string()),
        ("x-total-pages", last.to_string()),
        ("x-next-page", if page.number < last { (page.number + 1).to_string() } else { String::new() }),
        ("x-prev-page", if page.number > 1 { (page.number.min(last + 1) - 1).to_string() } else { String::new() }),
    ];
    headers.extend(link_header(&url, &call.query, page, total, true).map(|l| ("link", l)));
    Ok((StatusCode::OK, Value::Array(body), headers))
}

/// The statuses GitLab's deployments API takes (creating and updating).
const GITLAB_DEPLOYMENT_STATES: &[&str] = &["running", "success", "failed", "canceled"];

/// A Grape `Boolean`: a JSON boolean, or `true`/`false` (and GitLab's other
/// spellings) as text.
fn gitlab_boolean(fields: &Fields, key: &str) -> Result<Option<bool>, String> {
    match fields.0.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if gitlab_true(s) => Ok(Some(true)),
        Some(Value::String(s))
            if ["false", "f", "no", "n", "0", "off"].contains(&s.trim().to_ascii_lowercase().as_str()) =>
        {
            Ok(Some(false))
        }
        Some(_) => Err(format!("{key} is invalid")),
    }
}

/// GitLab's environment names: letters, digits, spaces and `-_/.${}`, not
/// starting or ending with `/`, at most 255 characters.
fn gitlab_environment_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().count() <= 255
        && !name.starts_with('/')
        && !name.ends_with('/')
        && name.chars().all(|c| c.is_alphanumeric() || " -_/.${}".contains(c))
}

/// GitLab's deployment state machine, as `Deployment#update_status` drives
/// it: the status a deployment in `from` goes to on `to`, or why not.
fn gitlab_deployment_transition(from: &str, to: &str) -> Result<String, String> {
    let (event, allowed) = match to {
        // `run`: created → running only.
        "running" => ("run", from == "created"),
        // `succeed`, `drop`, `cancel`: from any status but their own.
        "success" => ("succeed", from != "success"),
        "failed" => ("drop", from != "failed"),
        "canceled" => ("cancel", from != "canceled"),
        _ => return Err(format!("status {to:?} does not have a valid value")),
    };
    if allowed { Ok(to.to_string()) } else { Err(format!("Status cannot transition via \"{event}\" (from {from})")) }
}

/// A deployment as GitLab answers it.
fn gitlab_deployment_json(d: &Deployment) -> Value {
    let updated = d.statuses.last().map(|s| s.created_at.clone()).unwrap_or_default();
    let created = d.statuses.first().map(|s| s.created_at.clone()).unwrap_or_default();
    let finished = ["success", "failed", "canceled"].contains(&d.status.as_str());
    json!({
        "id": d.id,
        "iid": d.id,
        "ref": d.git_ref,
        "sha": d.sha,
        "created_at": created,
        "updated_at": updated,
        "finished_at": finished.then_some(updated.clone()),
        "status": d.status,
        "user": { "id": 1, "username": "viaduct", "name": "Viaduct", "state": "active" },
        "deployable": null,
        "environment": { "id": d.id + 1_000_000, "name": d.environment, "external_url": null },
    })
}

/// `POST /api/v4/projects/{id}/deployments`: `environment`, `sha`, `ref`,
/// `tag` (a boolean) and `status` (running, success, failed or canceled)
/// all required (else 400, naming what is missing); the environment's name
/// as GitLab allows them; `sha` a full commit id and `ref` a plausible
/// branch or tag name or commit id (this forge has no repository: GitLab
/// answers 400 for a ref it does not hold). Made `created`, then moved to
/// `status`.
fn gitlab_deployment_create(ledger: &mut Ledger, call: &Call) -> Outcome {
    gitlab_auth(ledger, call)?;
    let project = call.segment(3);
    if project.is_empty() {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Project Not Found"));
    }
    let fields = gitlab_fields(call)?;
    let text = |key: &str| fields.text(key).map_err(|_| gitlab_param_invalid(format!("{key} is invalid")));
    let (environment, sha, git_ref, status) = (text("environment")?, text("sha")?, text("ref")?, text("status")?);
    let tag = gitlab_boolean(&fields, "tag").map_err(gitlab_param_invalid)?;
    let missing: Vec<String> = [
        ("environment", environment.is_none()),
        ("sha", sha.is_none()),
        ("ref", git_ref.is_none()),
        ("tag", tag.is_none()),
        ("status", status.is_none()),
    ]
    .iter()
    .filter(|(_, absent)| *absent)
    .map(|(key, _)| format!("{key} is missing"))
    .collect();
    let (Some(environment), Some(sha), Some(git_ref), Some(tag), Some(status)) =
        (environment, sha, git_ref, tag, status)
    else {
        return Err(gitlab_param_invalid(missing.join(", ")));
    };
    if !GITLAB_DEPLOYMENT_STATES.contains(&status.as_str()) {
        return Err(gitlab_param_invalid("status does not have a valid value".into()));
    }
    let plausible = |r: &str| !r.trim().is_empty() && !r.contains("..") && !r.contains(' ') && !r.starts_with("refs/");
    if !plausible(&git_ref) {
        let body = json!({ "message": { "ref": ["The branch or tag does not exist"] } });
        return Err(Refusal::with_body(StatusCode::BAD_REQUEST, format!("ref {git_ref:?} does not exist"), body));
    }
    if !is_sha(&sha) {
        return Err(gitlab_record_invalid("sha", "is not a commit of the project"));
    }
    if !gitlab_environment_name(&environment) {
        return Err(gitlab_record_invalid(
            "name",
            "can contain only letters, digits, '-', '_', '/', '$', '{', '}', '.', and spaces, \
             but it cannot start or end with '/'",
        ));
    }
    let id = ledger.next_id();
    let state = gitlab_deployment_transition("created", &status).map_err(gitlab_invalid)?;
    let deployment = Deployment {
        forge: Forge::GitLab,
        id,
        project,
        sha,
        git_ref,
        environment,
        task: String::new(),
        description: String::new(),
        payload: Value::Null,
        production_environment: None,
        tag: Some(tag),
        status: state.clone(),
        statuses: vec![gitlab_deployment_status(id, &state)],
    };
    let body = gitlab_deployment_json(&deployment);
    ledger.deployments.push(deployment);
    Ok((StatusCode::CREATED, body))
}

/// A GitLab deployment's status, now.
fn gitlab_deployment_status(id: u64, state: &str) -> DeploymentStatus {
    DeploymentStatus {
        id,
        state: state.to_string(),
        description: String::new(),
        log_url: String::new(),
        environment_url: String::new(),
        created_at: timestamp(SystemTime::now()),
    }
}

/// `PUT /api/v4/projects/{id}/deployments/{deployment_id}`: the project's
/// deployment (else 404) moved to `status` (required: running, success,
/// failed or canceled) if its state machine allows (else 400).
fn gitlab_deployment_update(ledger: &mut Ledger, call: &Call) -> Outcome {
    gitlab_auth(ledger, call)?;
    let (project, id) = (call.segment(3), call.segment(5).parse::<u64>().ok());
    let Some(at) =
        ledger.deployments.iter().position(|d| d.forge == Forge::GitLab && Some(d.id) == id && d.project == project)
    else {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "404 Not found"));
    };
    let fields = gitlab_fields(call)?;
    let status = fields.text("status").map_err(|_| gitlab_param_invalid("status is invalid".into()))?;
    let Some(status) = status else { return Err(gitlab_param_invalid("status is missing".into())) };
    if !GITLAB_DEPLOYMENT_STATES.contains(&status.as_str()) {
        return Err(gitlab_param_invalid("status does not have a valid value".into()));
    }
    let deployment = &mut ledger.deployments[at];
    let state = gitlab_deployment_transition(&deployment.status, &status)
        .map_err(|why| gitlab_record_invalid("status", &why))?;
    deployment.status.clone_from(&state);
    deployment.statuses.push(gitlab_deployment_status(deployment.id, &state));
    Ok((StatusCode::OK, gitlab_deployment_json(deployment)))
}

// ------------------------------------------------------------ Gitea/Forgejo

/// Gitea's commit status states (`CreateStatusOption.state`).
const GITEA_STATES: &[&str] = &["pending", "success", "error", "failure", "warning"];

/// Gitea's binding or validation error (422).
fn gitea_invalid(why: String) -> Refusal {
    Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, why)
}

/// Gitea's body binding: JSON or a form, by `Content-Type`.
fn gitea_fields(call: &Call) -> Result<Fields, Refusal> {
    let content_type = call.header("content-type");
    if content_type.contains("json") {
        Fields::json(&call.body).map_err(gitea_invalid)
    } else if content_type.contains("form-urlencoded") {
        Ok(Fields::form(&String::from_utf8_lossy(&call.body)))
    } else if content_type.is_empty() {
        Err(gitea_invalid("Empty Content-Type".into()))
    } else {
        Err(gitea_invalid(format!("Unsupported Content-Type {content_type:?}")))
    }
}

/// `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`: `state` required;
/// `context`, `description` and `target_url` trimmed, as Gitea stores them.
fn gitea_status(ledger: &mut Ledger, call: &Call) -> Outcome {
    if !authorization_is(call, &ledger.token) {
        return Err(Refusal::unauthorized(credentials_missing(call.headers.contains_key("authorization"))));
    }
    let (project, sha) = (format!("{}/{}", call.segment(3), call.segment(4)), call.segment(6));
    if !is_sha(&sha) {
        return Err(gitea_invalid(format!("invalid sha {sha:?}")));
    }
    let fields = gitea_fields(call)?;
    let status = gitea_status_fields(&fields).map_err(gitea_invalid)?;
    let stored = StoredStatus::new(ledger.next_id(), Forge::Gitea, &project, &sha, &status);
    let body = gitea_status_json(&stored, &call.root());
    ledger.statuses.push(stored);
    ledger.deliveries.push(status.delivery(Forge::Gitea, project, sha));
    Ok((StatusCode::CREATED, body))
}

/// A commit status as Gitea answers it (its state in `status`).
fn gitea_status_json(status: &StoredStatus, root: &str) -> Value {
    json!({
        "id": status.id,
        "status": status.state,
        "context": status.context,
        "description": status.description.clone().unwrap_or_default(),
        "target_url": status.target_url.clone().unwrap_or_default(),
        "url": format!("{root}/api/v1/repos/{}/statuses/{}", status.project, status.sha),
        "created_at": status.created_at,
        "updated_at": status.created_at,
        "creator": { "id": 1, "login": "viaduct" },
    })
}

/// `GET /api/v1/repos/{owner}/{repo}/commits/{sha}/status`: the combined
/// status of a page (`page` from 1, `limit` 30 unless given, at most 50)
/// of the latest status of each context, newest first, as Gitea answers
/// it: `total_count` and the combined `state` are of that page (the
/// total is in `X-Total-Count`), and an empty page has the state `""` and
/// `statuses` null (as recent Gitea does). Any ref other than a full sha
/// is 404.
fn gitea_combined(ledger: &Ledger, call: &Call) -> Paged {
    if !authorization_is(call, &ledger.token) {
        return Err(Refusal::unauthorized(credentials_missing(call.headers.contains_key("authorization"))));
    }
    let (owner, repo, sha) = (call.segment(3), call.segment(4), call.segment(6));
    let project = format!("{owner}/{repo}");
    if !is_sha(&sha) {
        return Err(Refusal::new(StatusCode::NOT_FOUND, format!("ref {sha:?} not found")));
    }
    let page = Page::lenient(&Fields::form(&call.query), "limit", 30, 50);
    let latest = latest_statuses(ledger, Forge::Gitea, &project, &sha);
    let shown = page.of(&latest);
    let root = call.root();
    let (state, statuses) = if shown.is_empty() {
        ("", Value::Null)
    } else {
        let statuses = shown.iter().map(|s| gitea_status_json(s, &root)).collect();
        (combined_state(shown.iter().map(|s| s.state.as_str())), Value::Array(statuses))
    };
    let repo_url = format!("{root}/api/v1/repos/{project}");
    let body = json!({
        "state": state,
        "sha": sha,
        "total_count": shown.len(),
        "statuses": statuses,
        "repository": { "id": 1, "name": repo, "full_name": project, "owner": { "id": 1, "login": owner } },
        "commit_url": format!("{repo_url}/commits/{sha}"),
        "url": format!("{repo_url}/commits/{sha}/status"),
    });
    Ok((StatusCode::OK, body, vec![("x-total-count", latest.len().to_string())]))
}

/// Gitea's status fields.
fn gitea_status_fields(fields: &Fields) -> Result<StatusFields, String> {
    let trimmed = |key: &str| fields.text(key).map(|v| v.map(|s| s.trim().to_string()));
    Ok(StatusFields {
        state: required(fields.choice("state", GITEA_STATES)?, "state")?,
        context: trimmed("context")?.unwrap_or_default(),
        description: trimmed("description")?,
        target_url: trimmed("target_url")?,
    })
}

// ------------------------------------------------------ encodings and time

/// `%XX` escapes decoded (and `+` as a space in queries and forms);
/// malformed escapes are kept as they are.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 3).and_then(|h| Some(hex_digit(h[0])? * 16 + hex_digit(h[1])?));
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of a hexadecimal digit.
fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Seconds since the Unix epoch.
fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as the forges write times.
fn timestamp(t: SystemTime) -> String {
    let secs = epoch_seconds(t);
    let (year, month, day) = civil_date(secs / 86_400);
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The (year, month, day) of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// An ISO 8601 time as GitHub takes it: `YYYY-MM-DDTHH:MM:SS` then `Z`,
/// an offset or fractional seconds.
fn is_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    b.len() > shape.len()
        && shape.iter().zip(b).all(|(want, got)| if *want == b'd' { got.is_ascii_digit() } else { want == got })
        && matches!(b[shape.len()], b'Z' | b'+' | b'-' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "forge-token";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn addr(api: &ForgeApi) -> String {
        api.url().trim_start_matches("http://").to_string()
    }

    /// A request with `headers` and `body` (none when null): (status,
    /// head, JSON body).
    fn send(api: &ForgeApi, method: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String, Value) {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let (code, head, reply) = crate::http_with_head(&addr(api), method, path, headers, body.as_bytes());
        (code, head, serde_json::from_slice(&reply).unwrap_or(Value::Null))
    }

    const GITHUB: &[(&str, &str)] = &[
        ("authorization", "Bearer forge-token"),
        ("user-agent", "viaduct-test"),
        ("accept", "application/vnd.github+json"),
        ("x-github-api-version", "2022-11-28"),
        ("content-type", "application/json"),
    ];
    const GITLAB: &[(&str, &str)] = &[("private-token", "forge-token"), ("content-type", "application/json")];

    fn github(api: &ForgeApi, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (code, _, reply) = send(api, method, path, GITHUB, &body);
        (code, reply)
    }

    /// A GitHub request with `Authorization: Bearer <credential>`.
    fn as_app(api: &ForgeApi, method: &str, path: &str, credential: &str, body: Value) -> (u16, Value) {
        let bearer = format!("Bearer {credential}");
        let mut headers = GITHUB.to_vec();
        headers[0] = ("authorization", &bearer);
        let (code, _, reply) = send(api, method, path, &headers, &body);
        (code, reply)
    }

    const APP: u64 = 4242;
    const INSTALLATION: u64 = 77;
    const APP_KEY: &str = include_str!("../fixtures/github-app-test-key.pem");
    const APP_PUBLIC_KEY: &str = include_str!("../fixtures/github-app-test-key.pub.pem");
    /// Another app's key (its private half thrown away).
    const OTHER_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApvPUJgh2zqqzHwB3B+o4
mgo2E2uBam+z4SaZ2AJtFswcCO/OZFEiPgrrwfktmyFPxoloBCCiHvmzWCLH3HKN
PyMH3yIVLUciCrpLjsNIDjDGq7vFNVLoEDS5pEAvd1O2P8SP2KhNCGXamGxdHxIm
ZJr083OfyySPROyW14GKhDCLtF0Z17FR0WUE8329EcWyHBDDDI/C8f8qGypLBbT/
YCHdXrO1wnnfkWXNExfRsTsgYFDZIk/gOfo+3Aim7wAP2viuA622S0ECUYCLXuWt
DSbouAMkUiX1DeBkvDEzIyJR2buHja102Gsw0aqm99GDlIZp0pwaJQq11e9wWysR
CQIDAQAB
-----END PUBLIC KEY-----
";

    fn now_s() -> i64 {
        i64::try_from(epoch_seconds(SystemTime::now())).unwrap()
    }

    /// `claims` signed RS256 with the app's private key.
    fn jwt(claims: Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(APP_KEY.as_bytes()).expect("the test key");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap()
    }

    /// A JWT as the server signs it: issued a minute ago, valid 9 minutes.
    fn app_jwt() -> String {
        jwt(json!({"iat": now_s() - 60, "exp": now_s() + 540, "iss": APP.to_string()}))
    }

    /// Registers the app and gets an installation token.
    fn installation_token(api: &ForgeApi) -> String {
        api.add_app(APP, APP_PUBLIC_KEY, INSTALLATION);
        let path = format!("/app/installations/{INSTALLATION}/access_tokens");
        let (code, reply) = as_app(api, "POST", &path, &app_jwt(), Value::Null);
        assert_eq!(code, 201, "{reply}");
        reply["token"].as_str().expect("a token").to_string()
    }

    fn gitlab(api: &ForgeApi, project: &str, body: Value) -> (u16, Value) {
        let (code, _, reply) = send(api, "POST", &format!("/api/v4/projects/{project}/statuses/{SHA}"), GITLAB, &body);
        (code, reply)
    }

    #[test]
    fn a_github_status_is_accepted_and_recorded() {
        let api = ForgeApi::start(TOKEN);
        let body = json!({"state": "pending", "target_url": "https://ci.example/runs/1", "context": "viaduct/ci"});
        let (code, reply) = github(&api, "POST", &format!("/repos/acme/app/statuses/{SHA}"), body);
        assert_eq!(code, 201, "{reply}");
        assert_eq!(reply["state"], "pending");
        assert_eq!(reply["context"], "viaduct/ci");
        assert!(reply["id"].is_u64() && reply["created_at"].is_string(), "{reply}");
        let got = api.deliveries();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].forge, got[0].project.as_str(), got[0].sha.as_str()), (Forge::GitHub, "acme/app", SHA));
        assert_eq!(got[0].target_url, "https://ci.example/runs/1");
        assert_eq!(api.states_of(SHA, "viaduct/ci"), ["pending"]);
        assert!(api.refused().is_empty(), "{:?}", api.refused());
        assert_eq!(api.requests(), 1);
    }

    #[test]
    fn bad_credentials_and_headers_are_refused() {
        let api = ForgeApi::start(TOKEN);
        let path = format!("/repos/acme/app/statuses/{SHA}");
        let body = json!({"state": "success"});
        let mut headers = GITHUB.to_vec();
        headers[0] = ("authorization", "Bearer nope");
        assert_eq!(send(&api, "POST", &path, &headers, &body).0, 401);
        headers[0] = ("authorization", "token forge-token");
        headers[1] = ("user-agent", "");
        assert_eq!(send(&api, "POST", &path, &headers, &body).0, 403);
        let gitea = format!("/api/v1/repos/acme/app/statuses/{SHA}");
        assert_eq!(send(&api, "POST", &gitea, &[("content-type", "application/json")], &body).0, 401);
        assert!(api.deliveries().is_empty());
        assert_eq!(api.refused().len(), 3, "{:?}", api.refused());
        let (code, reply) = github(&api, "GET", &path, json!({}));
        assert_eq!((code, reply["message"].as_str()), (405, Some("Method Not Allowed")));
    }

    #[test]
    fn github_checks_the_fields() {
        let api = ForgeApi::start(TOKEN);
        let path = format!("/repos/acme/app/statuses/{SHA}");
        let long = "x".repeat(141);
        assert_eq!(github(&api, "POST", &path, json!({"state": "success", "description": long})).0, 422);
        assert_eq!(github(&api, "POST", &path, json!({"state": "success", "description": &long[1..]})).0, 201);
        assert_eq!(github(&api, "POST", &path, json!({"state": "running"})).0, 422);
        assert_eq!(github(&api, "POST", &path, json!({"state": "error", "target_url": "ci/1"})).0, 422);
        assert_eq!(github(&api, "POST", "/repos/acme/app/statuses/ABC", json!({"state": "error"})).0, 422);
        assert_eq!(api.refused().len(), 4, "{:?}", api.refused());
        assert_eq!(api.states_of(SHA, "default"), ["success"]);
    }

    #[test]
    fn a_check_run_goes_to_completed_and_stays_there() {
        let api = ForgeApi::start(TOKEN);
        let token = installation_token(&api);
        let create = json!({
            "name": "viaduct", "head_sha": SHA, "status": "in_progress", "external_id": "run-1",
            "details_url": "https://ci.example/runs/1",
        });
        let (code, run) = as_app(&api, "POST", "/repos/acme/app/check-runs", &token, create);
        assert_eq!((code, run["status"].as_str()), (201, Some("in_progress")), "{run}");
        let id = run["id"].as_u64().expect("an id");
        let path = format!("/repos/acme/app/check-runs/{id}");
        assert_eq!(as_app(&api, "PATCH", &path, &token, json!({"status": "completed"})).0, 422);
        let annotation = json!({
            "path": "src/lib.rs", "start_line": 3, "end_line": 3, "annotation_level": "failure", "message": "no",
        });
        let output = json!({"title": "running", "summary": "so far", "annotations": [annotation]});
        assert_eq!(as_app(&api, "PATCH", &path, &token, json!({"output": output})).0, 200);
        let output = json!({"title": "1 failure", "summary": "tests failed", "annotations": [annotation]});
        let (code, done) = as_app(&api, "PATCH", &path, &token, json!({"conclusion": "failure", "output": output}));
        assert_eq!(
            (code, done["status"].as_str(), done["conclusion"].as_str()),
            (200, Some("completed"), Some("failure"))
        );
        assert_eq!(done["output"]["annotations_count"], 2);
        assert_eq!(as_app(&api, "PATCH", &path, &token, json!({"status": "in_progress"})).0, 422);
        let too_many = json!({"title": "t", "summary": "s", "annotations": vec![annotation.clone(); 51]});
        assert_eq!(as_app(&api, "PATCH", &path, &token, json!({"output": too_many})).0, 422);
        let got = api.deliveries();
        assert_eq!(got.len(), 3);
        assert_eq!((got[2].conclusion.as_deref(), got[2].annotations.len()), (Some("failure"), 1));
        assert_eq!(got[2].summary.as_deref(), Some("tests failed"));
        assert_eq!(api.states_of(SHA, "viaduct"), ["in_progress", "in_progress", "completed"]);
        assert!(api.refused().iter().any(|r| r.contains("violation")), "{:?}", api.refused());
        let runs = api.check_runs();
        assert_eq!(runs.len(), 1);
        let run = &runs[0];
        assert_eq!((run.id, run.project.as_str(), run.head_sha.as_str()), (id, "acme/app", SHA));
        assert_eq!((run.status.as_str(), run.conclusion.as_deref()), ("completed", Some("failure")));
        assert_eq!((run.external_id.as_str(), run.details_url.as_str()), ("run-1", "https://ci.example/runs/1"));
        assert_eq!((run.title.as_str(), run.summary.as_str()), ("1 failure", "tests failed"));
        assert_eq!(run.annotations, [annotation.clone(), annotation]);
    }

    #[test]
    fn an_app_jwt_gets_the_installation_and_a_token() {
        let api = ForgeApi::start(TOKEN);
        api.add_app(APP, APP_PUBLIC_KEY, INSTALLATION);
        let (code, found) = as_app(&api, "GET", "/repos/acme/app/installation", &app_jwt(), Value::Null);
        assert_eq!((code, found["id"].as_u64(), found["app_id"].as_u64()), (200, Some(INSTALLATION), Some(APP)));
        // `iss` as a number, too.
        let numeric = jwt(json!({"iat": now_s(), "exp": now_s() + 600, "iss": APP}));
        let path = format!("/app/installations/{INSTALLATION}/access_tokens");
        let (code, granted) = as_app(&api, "POST", &path, &numeric, Value::Null);
        assert_eq!(code, 201, "{granted}");
        let token = granted["token"].as_str().unwrap();
        assert!(token.starts_with("ghs_") && token[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        let expires = granted["expires_at"].as_str().unwrap();
        assert!(is_timestamp(expires) && expires > timestamp(SystemTime::now() + Duration::from_secs(3500)).as_str());
        assert_eq!(granted["permissions"], json!({"checks": "write", "statuses": "write"}));
        let (code, again) = as_app(&api, "POST", &path, &numeric, json!({"repositories": ["app"]}));
        assert_eq!(code, 201);
        assert_ne!(again["token"], granted["token"]);
        let other = format!("/app/installations/{}/access_tokens", INSTALLATION + 1);
        assert_eq!(as_app(&api, "POST", &other, &numeric, Value::Null).0, 404);
        assert_eq!(api.tokens_issued(), 2);
        assert_eq!(api.refused().len(), 1, "{:?}", api.refused());
        assert!(api.deliveries().is_empty());
    }

    #[test]
    fn bad_jwts_are_refused() {
        let api = ForgeApi::start(TOKEN);
        api.add_app(APP, APP_PUBLIC_KEY, INSTALLATION);
        api.add_app(APP + 1, OTHER_PUBLIC_KEY, INSTALLATION + 1);
        let now = now_s();
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"iat": now, "exp": now + 60, "iss": APP}),
            &jsonwebtoken::EncodingKey::from_secret(APP_PUBLIC_KEY.as_bytes()),
        )
        .unwrap();
        let cases = [
            ("exp 20 minutes ahead", jwt(json!({"iat": now, "exp": now + 1200, "iss": APP})), "too far in the future"),
            (
                "signed with another key",
                jwt(json!({"iat": now, "exp": now + 60, "iss": APP + 1})),
                "could not be decoded",
            ),
            ("HS256", hs256, "could not be decoded"),
            ("expired", jwt(json!({"iat": now - 600, "exp": now - 10, "iss": APP})), "future time"),
            ("issued in the future", jwt(json!({"iat": now + 120, "exp": now + 300, "iss": APP})), "'Issued at'"),
            ("iat not an integer", jwt(json!({"iat": now as f64 + 0.5, "exp": now + 60, "iss": APP})), "'Issued at'"),
            ("no such app", jwt(json!({"iat": now, "exp": now + 60, "iss": 9})), "could not be decoded"),
            ("iss not a number", jwt(json!({"iat": now, "exp": now + 60, "iss": "app"})), "'Issuer'"),
            ("not a JWT", "ghs_0123".to_string(), "could not be decoded"),
        ];
        let path = format!("/app/installations/{INSTALLATION}/access_tokens");
        for (what, token, message) in &cases {
            let (code, reply) = as_app(&api, "POST", &path, token, Value::Null);
            assert_eq!(code, 401, "{what}: {reply}");
            assert!(reply["message"].as_str().unwrap().contains(message), "{what}: {reply}");
        }
        // A JWT is not a credential of the repository endpoints.
        let status = format!("/repos/acme/app/statuses/{SHA}");
        let (code, reply) = as_app(&api, "POST", &status, &app_jwt(), json!({"state": "success"}));
        assert_eq!((code, reply["message"].as_str()), (401, Some("Bad credentials")));
        assert_eq!(api.tokens_issued(), 0);
        assert_eq!(api.refused().len(), cases.len() + 1, "{:#?}", api.refused());
        assert_eq!(api.refused_except_revoked(), api.refused());
    }

    #[test]
    fn check_runs_take_only_installation_tokens_until_revoked() {
        let api = ForgeApi::start(TOKEN);
        let create = json!({"name": "viaduct", "head_sha": SHA, "status": "queued"});
        let (code, reply) = github(&api, "POST", "/repos/acme/app/check-runs", create.clone());
        assert_eq!((code, reply["message"].as_str()), (403, Some("You must authenticate via a GitHub App.")));
        let token = installation_token(&api);
        let (code, run) = as_app(&api, "POST", "/repos/acme/app/check-runs", &token, create);
        assert_eq!(code, 201, "{run}");
        let path = format!("/repos/acme/app/check-runs/{}", run["id"]);
        assert_eq!(github(&api, "PATCH", &path, json!({"status": "in_progress"})).0, 403);
        // Statuses take both.
        let status = format!("/repos/acme/app/statuses/{SHA}");
        assert_eq!(as_app(&api, "POST", &status, &token, json!({"state": "pending"})).0, 201);
        assert_eq!(github(&api, "POST", &status, json!({"state": "success"})).0, 201);
        assert_eq!(api.refused_except_revoked().len(), 2, "{:?}", api.refused());

        api.revoke_tokens();
        let (code, reply) = as_app(&api, "PATCH", &path, &token, json!({"status": "in_progress"}));
        assert_eq!((code, reply["message"].as_str()), (401, Some("Bad credentials")));
        assert_eq!(as_app(&api, "POST", &status, &token, json!({"state": "success"})).0, 401);
        assert_eq!(api.refused().len(), 4, "{:?}", api.refused());
        assert_eq!(api.refused_except_revoked().len(), 2, "{:?}", api.refused());
        assert!(api.refused().last().unwrap().contains("revoked"));
        // A new token works.
        let fresh = installation_token(&api);
        assert_eq!(as_app(&api, "PATCH", &path, &fresh, json!({"status": "in_progress"})).0, 200);
        assert_eq!((api.tokens_issued(), api.check_runs()[0].status.as_str()), (2, "in_progress"));
    }

    #[test]
    fn a_rerequested_payload_names_the_check_run() {
        let api = ForgeApi::start(TOKEN);
        let token = installation_token(&api);
        let create = json!({
            "name": "viaduct/ci/test", "head_sha": SHA, "conclusion": "failure", "external_id": "run-9/test",
            "details_url": "https://ci.example/runs/9",
        });
        let (code, run) = as_app(&api, "POST", "/repos/acme/app/check-runs", &token, create);
        assert_eq!(code, 201, "{run}");
        let id = run["id"].as_u64().unwrap();
        let payload: Value = serde_json::from_str(&api.rerequested_payload(id, APP, "octocat")).unwrap();
        assert_eq!(payload["action"], "rerequested");
        let run = &payload["check_run"];
        assert_eq!((run["id"].as_u64(), run["name"].as_str()), (Some(id), Some("viaduct/ci/test")));
        assert_eq!((run["head_sha"].as_str(), run["external_id"].as_str()), (Some(SHA), Some("run-9/test")));
        assert_eq!((run["status"].as_str(), run["conclusion"].as_str()), (Some("completed"), Some("failure")));
        assert_eq!(run["details_url"], "https://ci.example/runs/9");
        assert_eq!((run["app"]["id"].as_u64(), run["app"]["slug"].as_str()), (Some(APP), Some("viaduct")));
        assert_eq!(payload["repository"]["full_name"], "acme/app");
        assert_eq!(payload["sender"]["login"], "octocat");
        assert_eq!(payload["installation"]["id"].as_u64(), Some(INSTALLATION));
    }

    #[test]
    fn gitlab_takes_encoded_paths_pipelines_and_its_state_machine() {
        let api = ForgeApi::start(TOKEN);
        let (code, first) = gitlab(&api, "group%2Fapp", json!({"state": "running", "name": "build"}));
        assert_eq!(code, 201, "{first}");
        let pipeline = first["pipeline_id"].as_u64().expect("a pipeline id");
        assert_eq!(api.deliveries()[0].project, "group/app");
        let (code, second) = gitlab(&api, "group%2Fapp", json!({"state": "running", "name": "build"}));
        assert_eq!(code, 400);
        assert!(second["message"].as_str().unwrap().starts_with("Cannot transition status via :run from :running"));
        let (code, done) =
            gitlab(&api, "group%2Fapp", json!({"state": "success", "name": "build", "pipeline_id": pipeline}));
        assert_eq!(
            (code, done["id"].clone(), done["pipeline_id"].as_u64()),
            (201, first["id"].clone(), Some(pipeline))
        );
        // After a finished job, a status starts a new job (a retry).
        let (code, retry) = gitlab(&api, "group%2Fapp", json!({"state": "running", "name": "build"}));
        assert_eq!((code, retry["pipeline_id"].as_u64()), (201, Some(pipeline)));
        assert_ne!(retry["id"], first["id"]);
        let missing = json!({"state": "success", "name": "build", "pipeline_id": pipeline + 100});
        assert_eq!(gitlab(&api, "group%2Fapp", missing).0, 404);
        assert_eq!(gitlab(&api, "7", json!({"state": "done"})).0, 400);
        let query = format!("/api/v4/projects/7/statuses/{SHA}?state=pending&context=lint&description=a+b");
        assert_eq!(send(&api, "POST", &query, &[("private-token", TOKEN)], &Value::Null).0, 201);
        let lint = api.deliveries().into_iter().find(|d| d.context == "lint").expect("the lint status");
        assert_eq!((lint.project.as_str(), lint.description.as_str()), ("7", "a b"));
        assert_ne!(lint.pipeline_id, Some(pipeline));
        assert_eq!(api.states_of(SHA, "build"), ["running", "success", "running"]);
        assert_eq!(api.refused().len(), 3, "{:?}", api.refused());
    }

    #[test]
    fn github_deployments_are_checked_listed_and_given_statuses() {
        let api = ForgeApi::start(TOKEN);
        let path = "/repos/acme/app/deployments";
        let good = json!({
            "ref": SHA,
            "environment": "production",
            "auto_merge": false,
            "required_contexts": [],
            "payload": {"viaduct_deployment": 5},
        });
        let with = |key: &str, value: Value| {
            let mut body = good.clone();
            body[key] = value;
            body
        };
        assert_eq!(github(&api, "POST", path, with("ref", json!("main"))).0, 422, "only a full sha resolves");
        assert_eq!(github(&api, "POST", path, with("environment", json!(" "))).0, 422);
        assert_eq!(github(&api, "POST", path, with("required_contexts", json!("ci"))).0, 422);
        assert_eq!(github(&api, "POST", path, with("payload", json!(3))).0, 422);
        let mut merging = good.clone();
        merging.as_object_mut().unwrap().remove("auto_merge");
        assert_eq!(github(&api, "POST", path, merging).0, 409, "auto_merge defaults to true");
        // Without `required_contexts`, every context of the commit must pass.
        let status = json!({"state": "failure", "context": "viaduct/ci"});
        assert_eq!(github(&api, "POST", &format!("/repos/acme/app/statuses/{SHA}"), status).0, 201);
        let mut checked = good.clone();
        checked.as_object_mut().unwrap().remove("required_contexts");
        let (code, reply) = github(&api, "POST", path, checked);
        assert_eq!((code, reply["errors"][0]["contexts"][0].as_str()), (409, Some("viaduct/ci")), "{reply}");
        assert_eq!(github(&api, "POST", path, with("required_contexts", json!(["viaduct/ci"]))).0, 409);
        assert!(api.deployments().is_empty());

        let (code, made) = github(&api, "POST", path, good.clone());
        assert_eq!(code, 201, "{made}");
        let id = made["id"].as_u64().expect("an id");
        assert_eq!((made["sha"].as_str(), made["payload"]["viaduct_deployment"].as_u64()), (Some(SHA), Some(5)));
        let (code, other) = github(&api, "POST", path, with("environment", json!("staging")));
        assert_eq!(code, 201, "{other}");
        let (code, listed) = github(&api, "GET", &format!("{path}?sha={SHA}&environment=production"), Value::Null);
        assert_eq!((code, listed.as_array().map(Vec::len), listed[0]["id"].as_u64()), (200, Some(1), Some(id)));
        let (_, all) = github(&api, "GET", path, Value::Null);
        assert_eq!(all[0]["id"], other["id"], "newest first: {all}");

        let statuses = format!("{path}/{id}/statuses");
        assert_eq!(github(&api, "POST", &statuses, json!({"state": "running"})).0, 422);
        assert_eq!(github(&api, "POST", &statuses, json!({"state": "queued", "log_url": "ci/1"})).0, 422);
        assert_eq!(github(&api, "POST", &statuses, json!({"description": "no state"})).0, 422);
        assert_eq!(github(&api, "POST", &format!("{path}/999/statuses"), json!({"state": "queued"})).0, 404);
        assert_eq!(
            github(&api, "POST", &format!("/repos/acme/other/deployments/{id}/statuses"), json!({"state": "queued"})).0,
            404
        );
        for state in ["queued", "in_progress", "success"] {
            let (log_url, environment_url) = ("https://ci.example/runs/1", "https://app.example");
            let body = json!({"state": state, "log_url": log_url, "environment_url": environment_url});
            let (code, reply) = github(&api, "POST", &statuses, body);
            assert_eq!((code, reply["state"].as_str()), (201, Some(state)), "{reply}");
        }
        let d = api.deployments().into_iter().find(|d| d.id == id).unwrap();
        let states: Vec<&str> = d.statuses.iter().map(|s| s.state.as_str()).collect();
        assert_eq!((d.status.as_str(), states), ("success", vec!["queued", "in_progress", "success"]));
        assert_eq!((d.statuses[0].log_url.as_str(), d.production_environment), ("https://ci.example/runs/1", None));
        let mut headers = GITHUB.to_vec();
        headers[0] = ("authorization", "Bearer nope");
        assert_eq!(send(&api, "POST", &statuses, &headers, &json!({"state": "success"})).0, 401);
    }

    #[test]
    fn gitlab_deployments_take_its_parameters_and_follow_its_state_machine() {
        let api = ForgeApi::start(TOKEN);
        let path = "/api/v4/projects/group%2Fapp/deployments";
        let post = |body: Value| {
            let (code, _, reply) = send(&api, "POST", path, GITLAB, &body);
            (code, reply)
        };
        let (code, reply) = post(json!({"environment": "production", "sha": SHA}));
        assert_eq!((code, reply["error"].as_str()), (400, Some("ref is missing, tag is missing, status is missing")));
        let good = json!({"environment": "production", "sha": SHA, "ref": "main", "tag": false, "status": "running"});
        let with = |key: &str, value: Value| {
            let mut body = good.clone();
            body[key] = value;
            body
        };
        assert_eq!(post(with("status", json!("created"))).0, 400, "the API creates no `created` deployment");
        assert_eq!(post(with("tag", json!("maybe"))).0, 400);
        assert_eq!(post(with("ref", json!("refs/heads/main"))).0, 400, "a branch's name, not its ref");
        assert_eq!(post(with("environment", json!("/prod"))).0, 400);
        assert!(api.deployments().is_empty());
        let (code, made) = post(good.clone());
        assert_eq!((code, made["status"].as_str()), (201, Some("running")), "{made}");
        let id = made["id"].as_u64().unwrap();
        let update = |id: u64, status: &str| {
            let path = format!("{path}/{id}");
            send(&api, "PUT", &path, GITLAB, &json!({"status": status})).0
        };
        assert_eq!(update(id, "running"), 400, "running only from created");
        assert_eq!(update(id, "blocked"), 400);
        assert_eq!(update(id + 100, "success"), 404);
        assert_eq!(update(id, "success"), 200);
        assert_eq!(update(id, "success"), 400, "not to its own status");
        let (code, form) = {
            let body = format!("environment=staging&sha={SHA}&ref=v1&tag=true&status=canceled");
            let headers = [("private-token", TOKEN), ("content-type", "application/x-www-form-urlencoded")];
            let (code, _, reply) = crate::http_with_head(&addr(&api), "POST", path, &headers, body.as_bytes());
            (code, serde_json::from_slice::<Value>(&reply).unwrap_or(Value::Null))
        };
        assert_eq!((code, form["status"].as_str()), (201, Some("canceled")), "{form}");
        let got = api.deployments();
        let states: Vec<&str> = got[0].statuses.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(
            (got[0].project.as_str(), got[0].tag, states),
            ("group/app", Some(false), vec!["running", "success"])
        );
        assert_eq!((got[1].git_ref.as_str(), got[1].tag, got[1].status.as_str()), ("v1", Some(true), "canceled"));
        let (code, _, _) = send(
            &api,
            "PUT",
            &format!("{path}/{id}"),
            &[("content-type", "application/json")],
            &json!({"status": "failed"}),
        );
        assert_eq!(code, 401);
    }

    #[test]
    fn gitea_statuses_are_recorded() {
        let api = ForgeApi::start(TOKEN);
        let path = format!("/api/v1/repos/acme/app/statuses/{SHA}");
        let headers = [("authorization", "token forge-token"), ("content-type", "application/json")];
        let (code, _, reply) = send(&api, "POST", &path, &headers, &json!({"state": "warning", "context": " ci "}));
        assert_eq!((code, reply["status"].as_str()), (201, Some("warning")), "{reply}");
        assert_eq!(send(&api, "POST", &path, &headers, &json!({"state": "running"})).0, 422);
        assert_eq!(api.states_of(SHA, "ci"), ["warning"]);
    }

    #[test]
    fn faults_are_consumed_in_order() {
        let api = ForgeApi::start(TOKEN);
        let path = format!("/repos/acme/app/statuses/{SHA}");
        api.fail_next(1, 429, &[("retry-after", "1")]);
        let (code, head, reply) = send(&api, "POST", &path, GITHUB, &json!({"state": "success"}));
        assert_eq!((code, reply["message"].as_str()), (429, Some("injected")));
        assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        api.set_available(false);
        assert_eq!(github(&api, "POST", &path, json!({"state": "success"})).0, 503);
        api.set_available(true);
        assert_eq!(github(&api, "POST", &path, json!({"state": "success"})).0, 201);
        assert_eq!((api.requests(), api.deliveries().len()), (3, 1));
        assert!(api.refused().is_empty(), "{:?}", api.refused());
    }

    #[test]
    fn a_hung_request_gets_no_answer_and_the_server_still_stops() {
        use std::io::{Read, Write};
        let api = ForgeApi::start(TOKEN);
        api.hang_next(1);
        let mut stream = std::net::TcpStream::connect(addr(&api)).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        stream.write_all(b"POST /repos/a/b/check-runs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").unwrap();
        let err = stream.read(&mut [0; 64]).expect_err("no answer");
        assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");
        assert_eq!(api.requests(), 1);
        assert!(api.deliveries().is_empty() && api.refused().is_empty());
        let started = Instant::now();
        drop(api);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wait_for_finds_a_delivery() {
        let api = ForgeApi::start(TOKEN);
        let path = format!("/repos/acme/app/statuses/{SHA}");
        assert_eq!(github(&api, "POST", &path, json!({"state": "failure", "context": "c"})).0, 201);
        let state = api.wait_for("the failure", |d| d.iter().find(|d| d.context == "c").map(|d| d.state.clone())).await;
        assert_eq!(state, "failure");
    }

    #[test]
    fn unknown_endpoints_are_refused() {
        let api = ForgeApi::start(TOKEN);
        assert_eq!(github(&api, "POST", "/repos/acme/app/commits", json!({})).0, 404);
        assert_eq!(api.refused(), ["POST /repos/acme/app/commits: no such endpoint"]);
    }

    /// A GitHub `GET`: (status, head, JSON body).
    fn github_get(api: &ForgeApi, path: &str) -> (u16, String, Value) {
        send(api, "GET", path, GITHUB, &Value::Null)
    }

    #[test]
    fn github_combined_status_is_the_latest_per_context() {
        let api = ForgeApi::start(TOKEN);
        let post = |sha: &str, body: Value| github(&api, "POST", &format!("/repos/acme/app/statuses/{sha}"), body).0;
        assert_eq!(
            post(SHA, json!({"state": "pending", "context": "ci/a", "target_url": "https://ci.example/1"})),
            201
        );
        assert_eq!(post(SHA, json!({"state": "success", "context": "ci/b", "description": "ok"})), 201);
        assert_eq!(post(SHA, json!({"state": "failure", "context": "ci/a", "description": "broken"})), 201);
        let other = "f".repeat(40);
        assert_eq!(post(&other, json!({"state": "error", "context": "ci/c"})), 201);
        assert_eq!(
            github(&api, "POST", &format!("/repos/acme/other/statuses/{SHA}"), json!({"state": "error"})).0,
            201
        );
        // A check run is not a commit status.
        let token = installation_token(&api);
        let run = json!({"name": "ci/d", "head_sha": SHA, "conclusion": "failure"});
        assert_eq!(as_app(&api, "POST", "/repos/acme/app/check-runs", &token, run).0, 201);
        let delivered = api.deliveries().len();

        let path = format!("/repos/acme/app/commits/{SHA}/status");
        let (code, head, combined) = github_get(&api, &path);
        assert_eq!(code, 200, "{combined}");
        assert!(head.to_ascii_lowercase().contains("x-ratelimit-remaining"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("link:"), "{head}");
        assert_eq!((combined["state"].as_str(), combined["sha"].as_str()), (Some("failure"), Some(SHA)));
        assert_eq!(combined["total_count"], 2);
        let statuses = combined["statuses"].as_array().unwrap();
        let contexts: Vec<_> = statuses.iter().map(|s| (s["context"].as_str(), s["state"].as_str())).collect();
        assert_eq!(contexts, [(Some("ci/a"), Some("failure")), (Some("ci/b"), Some("success"))]);
        let newest = &statuses[0];
        assert_eq!((newest["description"].as_str(), newest["target_url"].as_str()), (Some("broken"), None));
        assert!(newest["id"].is_u64() && is_timestamp(newest["created_at"].as_str().unwrap()), "{newest}");
        assert_eq!(newest["created_at"], newest["updated_at"]);
        assert_eq!(combined["repository"]["full_name"], "acme/app");

        // Then all succeed; a commit without statuses is pending.
        assert_eq!(post(SHA, json!({"state": "success", "context": "ci/a"})), 201);
        assert_eq!(github_get(&api, &path).2["state"], "success");
        let (code, _, none) = github_get(&api, &format!("/repos/acme/app/commits/{}/status", "e".repeat(40)));
        assert_eq!((code, none["state"].as_str(), none["total_count"].as_u64()), (200, Some("pending"), Some(0)));
        assert_eq!(none["statuses"], json!([]));
        assert_eq!(github_get(&api, "/repos/acme/app/commits/main/status").0, 422);

        assert_eq!(api.gets(), 3);
        assert_eq!(api.deliveries().len(), delivered + 1, "a GET is no delivery");
        assert_eq!(api.refused().len(), 1, "{:?}", api.refused());
    }

    #[test]
    fn github_combined_status_is_paginated() {
        let api = ForgeApi::start(TOKEN);
        for i in 0..5 {
            let body = json!({"state": "success", "context": format!("c{i}")});
            assert_eq!(github(&api, "POST", &format!("/repos/acme/app/statuses/{SHA}"), body).0, 201);
        }
        let path = format!("/repos/acme/app/commits/{SHA}/status");
        let contexts = |reply: &Value| -> Vec<String> {
            reply["statuses"].as_array().unwrap().iter().map(|s| s["context"].as_str().unwrap().to_string()).collect()
        };
        let (code, head, page) = github_get(&api, &format!("{path}?per_page=2&page=2"));
        assert_eq!(code, 200, "{page}");
        assert_eq!((contexts(&page), page["total_count"].as_u64()), (vec!["c2".into(), "c1".into()], Some(5)));
        let link = head.lines().find(|l| l.to_ascii_lowercase().starts_with("link:")).expect("a Link header");
        assert!(link.contains(&format!("{path}?page=3&per_page=2>; rel=\"next\"")), "{link}");
        assert!(link.contains("page=1&per_page=2>; rel=\"prev\"") && link.contains("rel=\"last\""), "{link}");
        let (_, _, last) = github_get(&api, &format!("{path}?page=3&per_page=2"));
        assert_eq!(contexts(&last), ["c0"]);
        let (_, _, past) = github_get(&api, &format!("{path}?page=9&per_page=2"));
        assert_eq!((past["statuses"].clone(), past["total_count"].as_u64()), (json!([]), Some(5)));
        // Over the maximum is the maximum; unreadable is the default.
        assert_eq!(contexts(&github_get(&api, &format!("{path}?per_page=500")).2).len(), 5);
        assert_eq!(contexts(&github_get(&api, &format!("{path}?per_page=x&page=0")).2)[0], "c4");
        assert_eq!(Page::lenient(&Fields::form(""), "per_page", 30, 100), Page { number: 1, size: 30 });
        assert_eq!(Page::lenient(&Fields::form("per_page=101"), "per_page", 30, 100).size, 100);
        assert_eq!(api.gets(), 5);
    }

    #[test]
    fn reading_statuses_takes_the_credentials_and_faults_apply() {
        let api = ForgeApi::start(TOKEN);
        let github_path = format!("/repos/acme/app/commits/{SHA}/status");
        let mut headers = GITHUB.to_vec();
        headers[0] = ("authorization", "Bearer nope");
        let (code, _, reply) = send(&api, "GET", &github_path, &headers, &Value::Null);
        assert_eq!((code, reply["message"].as_str()), (401, Some("Bad credentials")));
        headers[0] = ("authorization", "token forge-token");
        headers[2] = ("accept", "application/json");
        assert_eq!(send(&api, "GET", &github_path, &headers, &Value::Null).0, 415);
        let gitlab_path = format!("/api/v4/projects/7/repository/commits/{SHA}/statuses");
        assert_eq!(send(&api, "GET", &gitlab_path, &[("private-token", "nope")], &Value::Null).0, 401);
        let gitea_path = format!("/api/v1/repos/acme/app/commits/{SHA}/status");
        assert_eq!(send(&api, "GET", &gitea_path, &[], &Value::Null).0, 401);
        assert_eq!(api.refused().len(), 4, "{:?}", api.refused());
        // An installation token reads GitHub's statuses too.
        let token = installation_token(&api);
        assert_eq!(as_app(&api, "GET", &github_path, &token, Value::Null).0, 200);
        assert_eq!(send(&api, "GET", &gitlab_path, GITLAB, &Value::Null).0, 200);
        let bearer = [("authorization", "Bearer forge-token")];
        assert_eq!(send(&api, "GET", &gitlab_path, &bearer, &Value::Null).0, 200);
        assert_eq!(send(&api, "GET", &gitea_path, &bearer, &Value::Null).0, 200);
        assert_eq!(api.gets(), 4);

        api.fail_next(1, 502, &[]);
        assert_eq!(github_get(&api, &github_path).0, 502);
        api.hang_next(1);
        let mut stream = std::net::TcpStream::connect(addr(&api)).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let request = format!("GET {gitea_path} HTTP/1.1\r\nhost: x\r\nauthorization: token forge-token\r\n\r\n");
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        assert!(std::io::Read::read(&mut stream, &mut [0; 64]).is_err(), "no answer");
        api.set_available(false);
        assert_eq!(send(&api, "GET", &gitlab_path, GITLAB, &Value::Null).0, 503);
        api.set_available(true);
        assert_eq!(api.gets(), 4);
        // The token's POST, 4 refused and 4 answered GETs, 3 faults.
        assert_eq!(api.requests(), 1 + 4 + 4 + 3);
        assert!(api.deliveries().is_empty());
    }

    #[test]
    fn gitlab_lists_the_latest_statuses_or_all() {
        let api = ForgeApi::start(TOKEN);
        let (_, first) = gitlab(&api, "group%2Fapp", json!({"state": "running", "name": "build"}));
        let pipeline = first["pipeline_id"].as_u64().unwrap();
        let on = |body: Value| {
            let mut body = body;
            body["pipeline_id"] = pipeline.into();
            gitlab(&api, "group%2Fapp", body).0
        };
        assert_eq!(on(json!({"state": "success", "name": "build"})), 201);
        assert_eq!(on(json!({"state": "running", "name": "build", "description": "retry"})), 201);
        assert_eq!(on(json!({"state": "pending", "name": "lint"})), 201);
        // Another pipeline of the commit (another ref), and another project.
        let (code, feature) =
            gitlab(&api, "group%2Fapp", json!({"state": "failed", "name": "build", "ref": "feature"}));
        assert_eq!(code, 201, "{feature}");
        let feature_pipeline = feature["pipeline_id"].as_u64().unwrap();
        assert_ne!(feature_pipeline, pipeline);
        assert_eq!(gitlab(&api, "7", json!({"state": "success", "name": "build"})).0, 201);

        let path = format!("/api/v4/projects/group%2Fapp/repository/commits/{SHA}/statuses");
        let list = |query: &str| {
            let (code, head, reply) = send(&api, "GET", &format!("{path}{query}"), GITLAB, &Value::Null);
            assert_eq!(code, 200, "{query}: {reply}");
            let jobs = reply.as_array().unwrap().clone();
            (jobs, head.to_ascii_lowercase())
        };
        let names = |jobs: &[Value]| -> Vec<(String, String)> {
            let field = |job: &Value, key: &str| job[key].as_str().unwrap().to_string();
            jobs.iter().map(|job| (field(job, "name"), field(job, "status"))).collect()
        };
        let pair = |name: &str, status: &str| (name.to_string(), status.to_string());

        let (latest, head) = list("");
        assert_eq!(names(&latest), [pair("build", "running"), pair("lint", "pending"), pair("build", "failed")]);
        let retry = &latest[0];
        assert_eq!((retry["sha"].as_str(), retry["ref"].as_str()), (Some(SHA), Some("main")));
        assert_eq!((retry["pipeline_id"].as_u64(), retry["description"].as_str()), (Some(pipeline), Some("retry")));
        assert_eq!((retry["allow_failure"].as_bool(), retry["target_url"].clone()), (Some(false), Value::Null));
        assert!(retry["id"].as_u64() > first["id"].as_u64() && retry["created_at"].is_string(), "{retry}");
        assert!(head.contains("x-total: 3") && head.contains("x-page: 1") && head.contains("x-per-page: 20"), "{head}");

        let (all, _) = list("?all=true");
        assert_eq!(all.len(), 4);
        assert_eq!((all[0]["id"].clone(), all[0]["status"].as_str()), (first["id"].clone(), Some("success")));
        assert_eq!(list("?all=yes").0.len(), 4);
        assert_eq!(list("?all=false").0.len(), 3);
        assert_eq!(names(&list("?name=build").0), [pair("build", "running"), pair("build", "failed")]);
        assert_eq!(list("?name=build&all=1").0.len(), 3);
        assert_eq!(names(&list(&format!("?pipeline_id={feature_pipeline}")).0), [pair("build", "failed")]);
        assert_eq!(list(&format!("?pipeline_id={pipeline}&name=lint")).0.len(), 1);
        assert_eq!(names(&list("?ref=feature").0), [pair("build", "failed")]);
        assert_eq!(list("?stage=external").0.len(), 3);
        assert!(list("?stage=test").0.is_empty());
        assert_eq!(names(&list("?sort=desc").0)[0], pair("build", "failed"));
        assert_eq!(names(&list("?order_by=pipeline_id&sort=desc").0)[0], pair("build", "failed"));

        let (second, head) = list("?per_page=2&page=2");
        assert_eq!(names(&second), [pair("build", "failed")]);
        assert!(head.contains("x-total-pages: 2") && head.contains("x-prev-page: 1"), "{head}");
        assert!(
            head.contains("rel=\"first\"") && head.contains("rel=\"last\"") && !head.contains("rel=\"next\""),
            "{head}"
        );
        assert!(list("?per_page=1000").1.lines().any(|l| l == "x-per-page: 100"));

        for bad in ["?page=x", "?per_page=1.5", "?pipeline_id=abc", "?order_by=name", "?sort=up"] {
            let (code, _, reply) = send(&api, "GET", &format!("{path}{bad}"), GITLAB, &Value::Null);
            assert_eq!(code, 400, "{bad}: {reply}");
            assert!(reply["error"].is_string(), "{bad}: {reply}");
        }
        let (code, _, reply) =
            send(&api, "GET", "/api/v4/projects/7/repository/commits/main/statuses", GITLAB, &Value::Null);
        assert_eq!((code, reply["message"].as_str()), (404, Some("404 Commit Not Found")));
        let other = format!("/api/v4/projects/8/repository/commits/{SHA}/statuses");
        assert_eq!(send(&api, "GET", &other, GITLAB, &Value::Null).2, json!([]));
        assert_eq!(api.deliveries().len(), 6);
    }

    #[test]
    fn gitea_combined_status_is_the_latest_per_context() {
        let api = ForgeApi::start(TOKEN);
        let post = format!("/api/v1/repos/acme/app/statuses/{SHA}");
        let headers = [("authorization", "token forge-token"), ("content-type", "application/json")];
        for (state, context) in [("pending", "ci"), ("success", "lint"), ("failure", "ci"), ("warning", "lint")] {
            let body = json!({"state": state, "context": context, "target_url": "https://ci.example/1"});
            assert_eq!(send(&api, "POST", &post, &headers, &body).0, 201);
        }
        let path = format!("/api/v1/repos/acme/app/commits/{SHA}/status");
        let (code, head, combined) = send(&api, "GET", &path, &headers[..1], &Value::Null);
        assert_eq!(code, 200, "{combined}");
        assert!(head.to_ascii_lowercase().contains("x-total-count: 2"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("x-ratelimit"), "{head}");
        assert_eq!((combined["state"].as_str(), combined["sha"].as_str()), (Some("failure"), Some(SHA)));
        assert_eq!(combined["total_count"], 2);
        let statuses = combined["statuses"].as_array().unwrap();
        let got: Vec<_> = statuses.iter().map(|s| (s["context"].as_str(), s["status"].as_str())).collect();
        assert_eq!(got, [(Some("lint"), Some("warning")), (Some("ci"), Some("failure"))]);
        assert_eq!(
            (statuses[0]["target_url"].as_str(), statuses[0]["description"].as_str()),
            (Some("https://ci.example/1"), Some(""))
        );
        assert!(statuses[0].get("state").is_none() && statuses[0]["updated_at"].is_string(), "{}", statuses[0]);

        let body = json!({"state": "success", "context": "ci"});
        assert_eq!(send(&api, "POST", &post, &headers, &body).0, 201);
        assert_eq!(send(&api, "GET", &path, &headers[..1], &Value::Null).2["state"], "success");
        let (_, _, one) = send(&api, "GET", &format!("{path}?limit=1&page=2"), &headers[..1], &Value::Null);
        assert_eq!((one["total_count"].as_u64(), one["statuses"][0]["context"].as_str()), (Some(1), Some("lint")));
        // No status: Gitea's empty combined status.
        let none = format!("/api/v1/repos/acme/app/commits/{}/status", "e".repeat(40));
        let (code, _, empty) = send(&api, "GET", &none, &headers[..1], &Value::Null);
        assert_eq!((code, empty["state"].as_str(), empty["total_count"].as_u64()), (200, Some(""), Some(0)));
        assert_eq!(
            (empty["sha"].as_str(), empty["statuses"].clone()),
            (Some("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"), Value::Null)
        );
        assert_eq!(send(&api, "GET", "/api/v1/repos/acme/app/commits/main/status", &headers[..1], &Value::Null).0, 404);
        assert_eq!((api.gets(), api.deliveries().len()), (4, 5));
    }

    #[test]
    fn times_and_escapes() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(86_399)), "1970-01-01T23:59:59Z");
        assert!(is_timestamp("2024-02-29T10:00:00Z") && !is_timestamp("2024-02-29"));
        assert_eq!(percent_decode("group%2Fsub%2fapp+x%zz", false), "group/sub/app+x%zz");
        assert_eq!(percent_decode("a+b%20c", true), "a b c");
    }
}
