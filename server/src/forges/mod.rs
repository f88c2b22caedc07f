//! Commit statuses sent to forges (GitHub, GitLab, Gitea/Forgejo), for the
//! mirrors that have a forge connection ([`connection`]) — and the states of
//! their runs' deployments, sent to the forge's deployments API.
//!
//! The engine writes each status into the `status_outbox` tree in the
//! transition whose state it reports (`engine::commit_status`); [`Forges`]
//! sends them. Per repository, one pass at a time:
//! 1. read what waits (at most [`BATCH`]), oldest first, and wait until it
//!    is durable (a status never shows a state a crash could undo);
//! 2. keep only the newest status of each context (commit + context name):
//!    the forge shows the last one anyway, so older ones are not sent;
//! 3. send each context's status ([`kind`]: the forge's URL, auth and
//!    words), several at once but one per context, so a context's statuses
//!    arrive in order;
//! 4. delete what was sent (and what it superseded) — only the keys read, so
//!    a status written meanwhile waits for the next pass.
//!
//! A failure ([`reply`]) keeps the statuses: the repository waits (what a
//! rate limit asked for, else 1 s doubling up to 5 minutes) and tries again;
//! a request the forge refuses for good (HTTP 400, 422) is dropped, as is a
//! status still failing after [`EXPIRY`]. Every failure is kept as the
//! repository's `last_error` (`viaduct repos get`) and counted for
//! `/metrics`. A status deleted but not yet durable when the server dies is
//! sent again: the forge then sees the same state twice, never an older one.
//!
//! A deployment's states (`StatusRecord::deployment` ≠ 0) are a context of
//! their own, sent by [`Forges::send_deployment`] under the same rules: the
//! forge's deployment is created with the first state it has a word for, its
//! id kept in `forge_ids` (`deployment:<id>` of the commit) with the rank of
//! the last state sent, so a deployment is created once and each state sent
//! once — but for a crash between the forge's answer and keeping it: GitHub's
//! deployment is then found again by its payload (`viaduct_deployment`), its
//! status may be sent twice (GitHub keeps a list of them: the newest shows);
//! GitLab's may be created twice. Gitea and Forgejo have no deployments API:
//! their deployment states are taken out of the outbox, neither delivered
//! nor dropped.

pub mod checks;
pub mod connection;
pub mod github_app;
pub mod kind;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use viaduct_proto::v1::{DeploymentState, ForgeConnection, ForgeDelivery, Status};

use self::kind::Kind;
use crate::outbound::{self as reply, Reply};
use crate::{
    convert,
    depot::Depot,
    engine::Engine,
    error::Result,
    repos::Repos,
    store::{
        Store, T, WriteSet, decode,
        keys::RunId,
        now_ms,
        records::{ForgeDeliveryRecord, SCHEMA_VERSION, StatusRecord},
    },
};

/// The most statuses of one repository read in one pass.
pub const BATCH: usize = 2000;
/// Statuses of one repository in flight at once (GitLab: one).
const IN_FLIGHT: usize = 4;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A status still failing this long after its state was reached is dropped.
pub const EXPIRY_MS: i64 = 24 * 3600 * 1000;
/// Commits whose statuses are read back on a repository's first pass.
const MAX_RECOVERY_READS: usize = 100;
/// Waiting statuses counted for `Repos.Get`, at most.
const MAX_COUNTED: usize = 100_000;
/// Bytes of a failing step's log read for its check run.
const LOG_TAIL: u64 = 64 * 1024;
/// How long ids a forge gave back (GitLab's pipelines) are kept.
const IDS_KEPT_MS: i64 = 30 * 24 * 3600 * 1000;

/// Counts for `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Statuses a forge accepted.
    pub delivered: AtomicU64,
    /// Attempts that failed and will be tried again.
    pub retried: AtomicU64,
    /// Statuses given up on (refused for good, or expired).
    pub dropped: AtomicU64,
}

/// A repository's turn: whether a pass runs, and when the next may start.
#[derive(Default)]
struct Turn {
    busy: bool,
    not_before: Option<Instant>,
    failures: u32,
}

/// See the module docs.
pub struct Forges {
    store: Arc<Store>,
    repos: Arc<Repos>,
    engine: Arc<Engine>,
    depot: Arc<Depot>,
    http: reqwest::Client,
    app_tokens: github_app::AppTokens,
    turns: Mutex<HashMap<String, Turn>>,
    /// Repositories that had their first pass since the server started.
    recovered: Mutex<std::collections::HashSet<String>>,
    wake: Notify,
    /// Counts for `/metrics`.
    pub counters: Counters,
}

/// One context's statuses read in a pass: the keys, and the newest.
struct Context {
    keys: Vec<Vec<u8>>,
    newest: StatusRecord,
}

/// An id a forge gave back (a GitLab pipeline, a GitHub check run), with
/// the attempt and rank (0 waiting, 1 running, 2 ended) of the state it was
/// last given for.
#[derive(Debug, Clone, Copy)]
struct ForgeId {
    id: u64,
    attempt: u32,
    rank: u8,
}

/// How a context's send went.
enum Sent {
    Accepted,
    Retry(Option<Duration>, String),
    Dropped(String),
    /// Not sent: an earlier one of the pass failed.
    Held,
    /// Nothing to send (a deployment state the forge has no word for, or
    /// one already sent): done, counted neither delivered nor dropped.
    Skipped,
}

impl Forges {
    /// The sender over the repositories' records and secrets; check runs'
    /// summaries read runs from `engine` and logs from `depot`.
    pub fn new(
        store: Arc<Store>,
        repos: Arc<Repos>,
        (engine, depot): (Arc<Engine>, Arc<Depot>),
    ) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(kind::USER_AGENT)
            // A forge's API answers; it does not send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Self {
            store,
            repos,
            engine,
            depot,
            http,
            app_tokens: github_app::AppTokens::default(),
            turns: Mutex::default(),
            recovered: Mutex::default(),
            wake: Notify::new(),
            counters: Counters::default(),
        }))
    }

    /// Sends statuses whenever the engine writes some (`statuses` changes),
    /// a backoff ends, and at least every second.
    pub fn spawn(self: &Arc<Self>, mut statuses: watch::Receiver<u64>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut pruned = Instant::now();
            loop {
                this.start_passes();
                if pruned.elapsed() > Duration::from_secs(3600) {
                    pruned = Instant::now();
                    if let Err(e) = this.prune_ids() {
                        tracing::warn!(error = %e, "cannot prune forge ids");
                    }
                }
                tokio::select! {
                    changed = statuses.changed() => if changed.is_err() { return },
                    () = this.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// The repositories with statuses waiting.
    fn waiting_repos(&self) -> Result<Vec<String>> {
        let tree = self.store.tree(T::StatusOutbox);
        let mut out = Vec::new();
        let mut from = Vec::new();
        while let Some(kv) = tree.range(from.clone()..).next() {
            let (key, _) = kv?;
            let repo = key.split(|b| *b == 0).next().unwrap_or_default().to_vec();
            out.push(String::from_utf8_lossy(&repo).into_owned());
            from = repo;
            from.push(1);
        }
        Ok(out)
    }

    /// Starts a pass for every repository with statuses waiting whose turn it is.
    fn start_passes(self: &Arc<Self>) {
        let repos = match self.waiting_repos() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the status outbox");
                return;
            }
        };
        let now = Instant::now();
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        for repo in repos {
            let turn = turns.entry(repo.clone()).or_default();
            if turn.busy || turn.not_before.is_some_and(|t| t > now) {
                continue;
            }
            turn.busy = true;
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let span = tracing::info_span!("forge_statuses", repo = %repo);
                let outcome = tracing::Instrument::instrument(this.pass(&repo), span).await;
                this.end_pass(&repo, outcome);
            });
        }
    }

    /// Records how a pass ended: a retry sets the repository's wait.
    fn end_pass(&self, repo: &str, outcome: Result<Option<Option<Duration>>>) {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        let turn = turns.entry(repo.to_string()).or_default();
        turn.busy = false;
        match outcome {
            Ok(None) => {
                turn.failures = 0;
                turn.not_before = None;
                // More may have come while it ran.
                self.wake.notify_one();
            }
            Ok(Some(wait)) => {
                turn.failures = turn.failures.saturating_add(1);
                let wait = wait.unwrap_or_else(|| reply::backoff(turn.failures));
                tracing::info!(repo, wait_ms = wait.as_millis() as u64, "forge statuses: trying again later");
                turn.not_before = Some(Instant::now() + wait);
            }
            Err(e) => {
                turn.failures = turn.failures.saturating_add(1);
                tracing::warn!(repo, error = %e, "forge statuses: pass failed");
                turn.not_before = Some(Instant::now() + reply::backoff(turn.failures));
            }
        }
    }

    /// One pass over a repository's waiting statuses. `Some(wait)`: some
    /// must be tried again (after `wait`, if the forge said).
    async fn pass(&self, repo: &str) -> Result<Option<Option<Duration>>> {
        let read = self.read_waiting(repo)?;
        if read.is_empty() {
            return Ok(None);
        }
        let conn = match self.repos.get(repo) {
            Ok(r) => r.forge.filter(|c| !c.kind.is_empty()),
            Err(crate::error::Error::NotFound(_)) => None,
            // Not the repository's fault: try again.
            Err(e) => return Err(e),
        };
        let Some(conn) = conn else {
            // The repository or its connection is gone: nobody to tell.
            tracing::info!(repo, statuses = read.len(), "no forge connection: statuses dropped");
            self.forget(read.into_iter().map(|(k, _)| k), 0)?;
            return Ok(None);
        };
        let token = match self.credential(&conn).await {
            Ok(token) => token,
            Err((wait, why)) => {
                // Nothing could be sent: what is too old goes now, not never.
                self.expire(repo, read, &why)?;
                self.failed(repo, &why)?;
                return Ok(Some(wait));
            }
        };
        // Sent only once durable: a forge never shows a state a crash undoes.
        // This flush also covers the previous pass's deletions, so a crash
        // cannot bring back a status older than one sent since.
        self.store.wait_durable(self.store.ticket_soon()).await;
        let kind = Kind::parse(&conn.kind).unwrap_or(Kind::GitHub);
        let mut contexts = coalesce(read, !conn.app_id.is_empty());
        // The first pass since the server started may hold statuses sent
        // just before a crash (their deletion lost): what the forge already
        // shows is not sent again.
        let mut shown = Vec::new();
        if conn.app_id.is_empty() && !self.recovered(repo) {
            match self.already_shown(repo, kind, &conn, &token, &contexts).await {
                Ok(found) => {
                    (shown, contexts) = contexts
                        .into_iter()
                        .partition(|c| found.contains(&(c.newest.commit.clone(), context_name(&conn, &c.newest))));
                    self.recovered.lock().unwrap_or_else(|p| p.into_inner()).insert(repo.to_string());
                    if !shown.is_empty() {
                        tracing::info!(
                            repo,
                            statuses = shown.len(),
                            "statuses the forge already shows: not sent again"
                        );
                    }
                }
                // The forge is down or limiting: wait, as for a status.
                Err(Reply::Retry { wait, why }) => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    self.failed(repo, &why)?;
                    return Ok(Some(wait));
                }
                Err(other) => tracing::info!(repo, error = ?other, "cannot read the forge's statuses: all are sent"),
            }
        }
        let in_flight = if kind.one_at_a_time() { 1 } else { IN_FLIGHT };
        let (conn, token) = (&conn, token.as_str());
        // After a rate limit, a server error or no answer, the rest of the
        // pass is held back: the forge is asked to wait, not flooded.
        let halt = std::sync::atomic::AtomicBool::new(false);
        let halt = &halt;
        let results: Vec<(Context, Sent)> = futures_util::stream::iter(contexts)
            .map(|c| async move {
                if halt.load(Ordering::Relaxed) {
                    return (c, Sent::Held);
                }
                let sent = self.send(repo, kind, conn, token, &c.newest).await;
                if matches!(sent, Sent::Retry(..)) {
                    halt.store(true, Ordering::Relaxed);
                }
                (c, sent)
            })
            .buffered(in_flight)
            .collect()
            .await;
        let (mut done, mut dropped, mut delivered) = (Vec::new(), 0, 0);
        done.extend(shown.into_iter().flat_map(|c| c.keys));
        let mut retry: Option<Option<Duration>> = None;
        let mut error = None;
        for (c, sent) in results {
            match sent {
                Sent::Accepted => {
                    delivered += 1;
                    done.extend(c.keys);
                }
                Sent::Dropped(why) => {
                    dropped += 1;
                    done.extend(c.keys);
                    error = Some(why);
                }
                Sent::Retry(_, why) if now_ms() - c.newest.time_ms > EXPIRY_MS => {
                    tracing::warn!(repo, context = %context_name(conn, &c.newest), error = %why, "status given up on: still failing after a day");
                    dropped += 1;
                    done.extend(c.keys);
                    error = Some(why);
                }
                Sent::Retry(wait, why) => {
                    retry = Some(match (retry.flatten(), wait) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    });
                    error = Some(why);
                }
                Sent::Held => retry = Some(retry.flatten()),
                Sent::Skipped => done.extend(c.keys),
            }
        }
        self.forget(done.into_iter(), dropped)?;
        self.counters.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.record(repo, delivered, error.as_deref())?;
        Ok(retry)
    }

    /// Whether `repo` has had its first pass since the server started.
    fn recovered(&self, repo: &str) -> bool {
        self.recovered.lock().unwrap_or_else(|p| p.into_inner()).contains(repo)
    }

    /// The contexts (commit, name) of `contexts` whose newest status the
    /// forge already shows, as it would be sent: state, description and link.
    async fn already_shown(
        &self,
        repo: &str,
        kind: Kind,
        conn: &ForgeConnection,
        token: &str,
        contexts: &[Context],
    ) -> std::result::Result<std::collections::HashSet<(String, String)>, Reply> {
        // Deployments are not in the combined status: their ids say what was sent.
        let statuses = || contexts.iter().filter(|c| c.newest.deployment == 0);
        let mut commits: Vec<&str> = statuses().map(|c| c.newest.commit.as_str()).collect();
        commits.sort_unstable();
        commits.dedup();
        // Bounded: beyond, statuses are sent again (at least once).
        commits.truncate(MAX_RECOVERY_READS);
        let mut found = std::collections::HashSet::new();
        for sha in commits {
            let url = kind.statuses_url(&conn.api_url, &conn.project, sha);
            let reply = match self.request(reqwest::Method::GET, url, kind.auth(token), &serde_json::Value::Null).await
            {
                Reply::Accepted(reply) => reply,
                other => return Err(other),
            };
            let current = kind.statuses_of(&reply);
            for c in statuses().filter(|c| c.newest.commit == sha) {
                let s = &c.newest;
                let name = context_name(conn, s);
                let state = kind.state(Status::try_from(s.status).unwrap_or(Status::Unspecified));
                let link = self.target_url(repo, s);
                if current.iter().any(|(n, st, d, u)| *n == name && st == state && *d == s.description && *u == link) {
                    found.insert((sha.to_string(), name));
                }
            }
        }
        Ok(found)
    }

    /// The statuses of `repo` waiting, oldest first (at most [`BATCH`]);
    /// one that cannot be read is deleted, with a line in the log.
    fn read_waiting(&self, repo: &str) -> Result<Vec<(Vec<u8>, StatusRecord)>> {
        let mut prefix = repo.as_bytes().to_vec();
        prefix.push(0);
        let (mut read, mut broken) = (Vec::new(), Vec::new());
        for kv in self.store.tree(T::StatusOutbox).scan_prefix(&prefix).take(BATCH) {
            let (key, value) = kv?;
            match decode::<StatusRecord>(T::StatusOutbox, &value) {
                Ok(rec) => read.push((key, rec)),
                Err(e) => {
                    tracing::warn!(repo, error = %e, "a waiting status cannot be read: dropped");
                    broken.push(key);
                }
            }
        }
        if !broken.is_empty() {
            self.forget(broken.into_iter(), 0)?;
        }
        Ok(read)
    }

    /// The token to send with: the connection's, or its GitHub App's
    /// installation token. On failure: how long to wait (if the forge
    /// said) and why.
    async fn credential(&self, conn: &ForgeConnection) -> std::result::Result<String, (Option<Duration>, String)> {
        let secret = self.repos.secret(connection::credential_secret(conn)).map_err(|e| (None, e.to_string()))?;
        if conn.app_id.is_empty() {
            return Ok(secret);
        }
        match self.app_tokens.token(&self.http, conn, &secret).await {
            Ok(token) => Ok(token),
            Err(Reply::Retry { wait, why }) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                Err((wait, why))
            }
            Err(Reply::Refused(why)) => Err((None, why)),
            Err(Reply::Accepted(_)) => Err((None, "GitHub App sign-in gave no token".into())),
        }
    }

    /// Drops the statuses of `read` older than [`EXPIRY_MS`].
    fn expire(&self, repo: &str, read: Vec<(Vec<u8>, StatusRecord)>, why: &str) -> Result<()> {
        let cutoff = now_ms() - EXPIRY_MS;
        let old: Vec<Vec<u8>> = read.into_iter().filter(|(_, s)| s.time_ms < cutoff).map(|(k, _)| k).collect();
        if !old.is_empty() {
            tracing::warn!(repo, statuses = old.len(), error = why, "statuses given up on: still failing after a day");
            let n = old.len() as u64;
            self.forget(old.into_iter(), n)?;
        }
        Ok(())
    }

    /// Where a status links to in the web UI.
    fn target_url(&self, repo: &str, s: &StatusRecord) -> String {
        match (s.run_id.as_str(), s.job_id.as_str()) {
            // Nothing ran: the repository's page.
            ("", _) => format!("{}/repos/{repo}", self.repos.public_url()),
            (run, "") => format!("{}/runs/{run}", self.repos.public_url()),
            (run, job) => format!("{}/runs/{run}/jobs/{job}", self.repos.public_url()),
        }
    }

    /// Sends one status: a commit status, or a check run for a GitHub App;
    /// or a deployment's state.
    async fn send(&self, repo: &str, kind: Kind, conn: &ForgeConnection, token: &str, s: &StatusRecord) -> Sent {
        if s.deployment != 0 {
            return self.send_deployment(repo, kind, conn, token, s).await;
        }
        let context = context_name(conn, s);
        let status = Status::try_from(s.status).unwrap_or(Status::Unspecified);
        let target_url = self.target_url(repo, s);
        if !conn.app_id.is_empty() {
            return self.send_check(repo, conn, token, s, (&context, status, &target_url)).await;
        }
        let ids_key = ids_key(repo, &s.commit, &format!("pipeline:{}", s.run_id));
        let pipeline_id = if kind == Kind::GitLab { self.id(&ids_key).map(|id| id.id) } else { None };
        let out = kind::Outgoing {
            project: &conn.project,
            sha: &s.commit,
            git_ref: &s.git_ref,
            context: &context,
            status,
            description: &s.description,
            target_url: &target_url,
            pipeline_id,
        };
        let url = kind.url(&conn.api_url, &conn.project, &s.commit);
        match self.request(reqwest::Method::POST, url, kind.auth(token), &kind.body(&out)).await {
            Reply::Accepted(reply) => {
                tracing::debug!(context, state = kind.state(status), "status delivered");
                if let Some(id) = kind.pipeline_of(&reply).filter(|id| Some(*id) != pipeline_id) {
                    self.keep_id(&ids_key, ForgeId { id, attempt: 0, rank: 0 });
                }
                Sent::Accepted
            }
            other => self.not_sent(&context, other),
        }
    }

    /// Sends one state of a context as its GitHub check run.
    async fn send_check(
        &self,
        repo: &str,
        conn: &ForgeConnection,
        token: &str,
        s: &StatusRecord,
        (context, status, target_url): (&str, Status, &str),
    ) -> Sent {
        // One check run per run, context and attempt (a retried job or run
        // is a new one, as GitHub's re-runs are).
        let ids_key = ids_key(repo, &s.commit, &format!("check:{}:{context}", s.run_id));
        let rank = checks::rank(status);
        let stored = self.id(&ids_key);
        let existing = stored.filter(|id| id.attempt == s.attempt);
        let api = conn.api_url.trim_end_matches('/');
        let auth = Kind::GitHub.auth(token);
        // An earlier attempt that never reported its end (retried at once)
        // must not stay "in progress" forever.
        if let Some(old) = stored.filter(|id| id.attempt < s.attempt && id.rank < 2) {
            let body = serde_json::json!({
                "status": "completed",
                "conclusion": "neutral",
                "output": {"title": format!("superseded by attempt {}", s.attempt), "summary": "This attempt was retried."},
            });
            let url = format!("{api}/repos/{}/check-runs/{}", conn.project, old.id);
            if let Reply::Retry { why, .. } | Reply::Refused(why) =
                self.request(reqwest::Method::PATCH, url, auth.clone(), &body).await
            {
                tracing::info!(context, error = %why, "an earlier attempt's check run was not closed");
            }
        }
        let mut output =
            if rank == 2 { self.check_output(conn.check_logs, s).await } else { checks::Output::default() };
        if existing.is_some_and(|id| id.rank == 2) {
            // Sent again (after a crash): GitHub would add the annotations twice.
            output.annotations.clear();
        }
        let external_id = if s.job_id.is_empty() { &s.run_id } else { &s.job_id };
        let (method, url, create) = match existing {
            Some(id) => (reqwest::Method::PATCH, format!("{api}/repos/{}/check-runs/{}", conn.project, id.id), None),
            None => (
                reqwest::Method::POST,
                format!("{api}/repos/{}/check-runs", conn.project),
                Some((context, s.commit.as_str())),
            ),
        };
        let body = checks::body(create, status, &s.description, target_url, external_id, &output);
        let id = match self.request(method, url, auth.clone(), &body).await {
            Reply::Accepted(reply) => match existing.map(|id| id.id).or(reply["id"].as_u64()) {
                Some(id) => id,
                None => return Sent::Dropped("GitHub's answer named no check run".into()),
            },
            Reply::Retry { wait, why } if why.starts_with("HTTP 401") => {
                // The installation token may have been revoked: a new one next time.
                self.app_tokens.forget(conn);
                return self.not_sent(context, Reply::Retry { wait, why });
            }
            // The check run is gone (the project changed): a new one next time.
            Reply::Retry { wait, why } if why.starts_with("HTTP 404") && existing.is_some() => {
                self.forget_id(&ids_key);
                return self.not_sent(context, Reply::Retry { wait, why });
            }
            other => return self.not_sent(context, other),
        };
        self.keep_id(&ids_key, ForgeId { id, attempt: s.attempt, rank });
        // Beyond the first 50 annotations: further updates, 50 each.
        for more in output.annotations.chunks(checks::PER_REQUEST).skip(1) {
            let body =
                serde_json::json!({"output": {"title": s.description, "summary": output.summary, "annotations": more}});
            let url = format!("{api}/repos/{}/check-runs/{id}", conn.project);
            if let Reply::Retry { why, .. } | Reply::Refused(why) =
                self.request(reqwest::Method::PATCH, url, auth.clone(), &body).await
            {
                tracing::info!(context, error = %why, "annotations not all sent");
                break;
            }
        }
        tracing::debug!(context, check_run = id, state = checks::state(status).0, "check run delivered");
        Sent::Accepted
    }

    /// Sends one state of a deployment to the forge's deployments API (see
    /// the module docs): the forge's deployment is created with the first
    /// state it has a word for, and told each later one.
    async fn send_deployment(
        &self,
        repo: &str,
        kind: Kind,
        conn: &ForgeConnection,
        token: &str,
        s: &StatusRecord,
    ) -> Sent {
        let context = context_name(conn, s);
        let state = DeploymentState::try_from(s.deployment_state).unwrap_or(DeploymentState::Unspecified);
        let Some(word) = kind.deployment_state(state) else {
            tracing::debug!(
                context,
                forge = kind.word(),
                state = state.as_str_name(),
                "nothing to tell the forge of this deployment state"
            );
            return Sent::Skipped;
        };
        let ids_key = ids_key(repo, &s.commit, &format!("deployment:{}", s.deployment));
        let rank = kind::deployment_rank(state);
        let stored = self.id(&ids_key);
        if stored.is_some_and(|id| id.rank >= rank) {
            // Sent before a crash lost the outbox's deletion.
            tracing::debug!(context, state = word, "deployment state already sent");
            return Sent::Skipped;
        }
        let log_url = self.target_url(repo, s);
        let out = kind::OutgoingDeployment {
            id: s.deployment,
            run_id: &s.run_id,
            pipeline: &s.pipeline,
            job: &s.job,
            sha: &s.commit,
            git_ref: &s.git_ref,
            environment: &s.environment,
            state,
            description: &s.description,
            log_url: &log_url,
            environment_url: &s.environment_url,
        };
        let auth = kind.auth(token);
        let mut known = stored.map(|id| id.id);
        if known.is_none() && kind == Kind::GitHub {
            // Made before a crash, its id not kept? GitHub lists it with
            // the payload it was made with.
            let url = kind.deployments_of_url(&conn.api_url, &conn.project, &s.commit, &s.environment);
            match self.request(reqwest::Method::GET, url, auth.clone(), &serde_json::Value::Null).await {
                Reply::Accepted(list) => known = kind.deployment_in(&list, s.deployment),
                Reply::Refused(why) => {
                    tracing::info!(context, error = %why, "cannot list the commit's deployments: creating one")
                }
                retry => return self.deployment_not_sent(conn, &context, retry),
            }
            if let Some(id) = known {
                tracing::info!(context, deployment = id, "the forge already holds this deployment");
                self.keep_id(&ids_key, ForgeId { id, attempt: 0, rank: 0 });
            }
        }
        let id = match known {
            Some(id) => id,
            None => {
                let url = kind.deployments_url(&conn.api_url, &conn.project);
                let body = kind.deployment_create_body(&out);
                let id = match self.request(reqwest::Method::POST, url, auth.clone(), &body).await {
                    Reply::Accepted(reply) => reply["id"].as_u64(),
                    other => return self.deployment_not_sent(conn, &context, other),
                };
                let Some(id) = id else {
                    let why = format!("{}'s answer to a new deployment named no deployment id", kind.word());
                    tracing::warn!(context, error = %why, "deployment state dropped");
                    return Sent::Dropped(why);
                };
                // GitLab's deployment is made with its state.
                let sent = if kind == Kind::GitLab { rank } else { 0 };
                self.keep_id(&ids_key, ForgeId { id, attempt: 0, rank: sent });
                if kind == Kind::GitLab {
                    tracing::debug!(context, deployment = id, state = word, "deployment created");
                    return Sent::Accepted;
                }
                id
            }
        };
        let url = kind.deployment_state_url(&conn.api_url, &conn.project, id);
        let method = if kind == Kind::GitLab { reqwest::Method::PUT } else { reqwest::Method::POST };
        match self.request(method, url, auth, &kind.deployment_state_body(&out)).await {
            Reply::Accepted(_) => {
                self.keep_id(&ids_key, ForgeId { id, attempt: 0, rank });
                tracing::debug!(context, deployment = id, state = word, "deployment state delivered");
                Sent::Accepted
            }
            // The deployment is gone from the forge: found or made again next time.
            Reply::Retry { wait, why } if why.starts_with("HTTP 404") => {
                self.forget_id(&ids_key);
                self.deployment_not_sent(conn, &context, Reply::Retry { wait, why })
            }
            other => self.deployment_not_sent(conn, &context, other),
        }
    }

    /// A deployment state not delivered (see [`Forges::not_sent`]); a GitHub
    /// App's installation token refused is renewed next time.
    fn deployment_not_sent(&self, conn: &ForgeConnection, context: &str, reply: Reply) -> Sent {
        if let Reply::Retry { why, .. } = &reply
            && why.starts_with("HTTP 401")
            && !conn.app_id.is_empty()
        {
            self.app_tokens.forget(conn);
        }
        self.not_sent(context, reply)
    }

    /// What an ended check run says: a run's jobs; a job's steps, and with
    /// `logs` its failing step's last log lines and their `file:line`
    /// annotations (of the attempt the state is of).
    async fn check_output(&self, logs: bool, s: &StatusRecord) -> checks::Output {
        let Some(run) = RunId::parse(&s.run_id).ok().and_then(|id| self.engine.get_run(id).ok()) else {
            return checks::Output::default();
        };
        if s.job_id.is_empty() {
            return checks::Output { summary: checks::run_summary(&run), annotations: Vec::new() };
        }
        let Some(job) = run.jobs.iter().find(|j| j.id == s.job_id) else { return checks::Output::default() };
        let failing =
            job.steps.iter().find(|st| matches!(Status::try_from(st.status), Ok(Status::Failure | Status::TimedOut)));
        let log = match failing {
            Some(step) if logs && job.attempt == s.attempt => {
                self.log_tail(&step.id, job.attempt).await.map(|log| (step.name.clone(), log))
            }
            _ => None,
        };
        let annotations = log.as_ref().map(|(_, l)| checks::annotations(l)).unwrap_or_default();
        let summary = checks::job_summary(job, log.as_ref().map(|(n, l)| (n.as_str(), l.as_str())));
        checks::Output { summary, annotations }
    }

    /// The last [`LOG_TAIL`] bytes of a step's log, as text.
    async fn log_tail(&self, step_id: &str, attempt: u32) -> Option<String> {
        let key = self.engine.step_key(step_id, attempt).ok()?;
        let size = self.engine.read_log(key, 0, 0).ok()?.size;
        let from = size.saturating_sub(LOG_TAIL);
        let (chunks, _, _) = self.depot.read_log(&self.engine, key, from, LOG_TAIL).await.ok()?;
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // From the first whole line.
        Some(if from > 0 { text.split_once('\n').map_or(text.clone(), |(_, rest)| rest.to_string()) } else { text })
    }

    /// One request to a forge, and what its answer means.
    async fn request(
        &self,
        method: reqwest::Method,
        url: String,
        (header, value): (&str, String),
        body: &serde_json::Value,
    ) -> Reply {
        let mut value = match reqwest::header::HeaderValue::from_str(&value) {
            Ok(v) => v,
            Err(_) => return Reply::Retry { wait: None, why: "the token is not a valid HTTP header value".into() },
        };
        value.set_sensitive(true);
        let mut request = self
            .http
            .request(method, url)
            .header(header, value)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        // A read sends no body.
        if !body.is_null() {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let answer = match request.send().await {
            Ok(r) => r,
            // Without the URL: it is the connection's, not news.
            Err(e) => return Reply::Retry { wait: None, why: format!("cannot reach the forge: {}", e.without_url()) },
        };
        let (code, headers) = (answer.status(), answer.headers().clone());
        let body = crate::outbound::body_of(answer).await;
        let now_s = (now_ms() / 1000).max(0) as u64;
        reply::classify(code, &headers, &body, now_s)
    }

    /// A status not delivered: tried again, or dropped.
    fn not_sent(&self, context: &str, reply: Reply) -> Sent {
        match reply {
            Reply::Accepted(_) => Sent::Accepted,
            Reply::Retry { wait, why } => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                tracing::info!(context, error = %why, "status not delivered: will try again");
                Sent::Retry(wait, why)
            }
            Reply::Refused(why) => {
                tracing::warn!(context, error = %why, "status refused by the forge: dropped");
                Sent::Dropped(why)
            }
        }
    }

    /// Deletes sent (or given up) statuses.
    fn forget(&self, keys: impl Iterator<Item = Vec<u8>>, dropped: u64) -> Result<()> {
        let mut ws = WriteSet::default();
        for k in keys {
            ws.delete(T::StatusOutbox, k);
        }
        self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        // Not waited for: a deletion lost in a crash only sends the same
        // status again. Flushed soon, so that window stays a few ms.
        self.store.commit(&ws)?;
        self.store.ticket_soon();
        Ok(())
    }

    /// Records a failure that stopped a pass before anything was sent.
    fn failed(&self, repo: &str, why: &str) -> Result<()> {
        tracing::warn!(repo, error = why, "forge statuses cannot be sent");
        self.record(repo, 0, Some(why))
    }

    /// Updates the repository's delivery record.
    fn record(&self, repo: &str, delivered: u64, error: Option<&str>) -> Result<()> {
        let mut rec: ForgeDeliveryRecord = self.store.get(T::ForgeDelivery, repo.as_bytes())?.unwrap_or_default();
        let now = now_ms();
        rec.schema = SCHEMA_VERSION;
        if delivered > 0 {
            rec.delivered += delivered;
            rec.last_delivered_ms = now;
        }
        // Kept after later successes, with its time: whoever looks sees
        // when the forge last failed, and whether it took a status since.
        if let Some(why) = error {
            rec.last_error = why.to_string();
            rec.last_error_ms = now;
        }
        let mut ws = WriteSet::default();
        ws.put(T::ForgeDelivery, repo.as_bytes(), &rec);
        self.store.commit(&ws)
    }

    /// How reporting to `repo`'s forge goes (`None` without a connection).
    pub fn delivery(&self, repo: &str, conn: Option<&ForgeConnection>) -> Result<Option<ForgeDelivery>> {
        if conn.is_none_or(|c| c.kind.is_empty()) {
            return Ok(None);
        }
        let rec: ForgeDeliveryRecord = self.store.get(T::ForgeDelivery, repo.as_bytes())?.unwrap_or_default();
        let mut prefix = repo.as_bytes().to_vec();
        prefix.push(0);
        // Counted up to a bound: a `Get` stays cheap during a long outage.
        let pending = self.store.tree(T::StatusOutbox).scan_prefix(&prefix).take(MAX_COUNTED).count() as u64;
        Ok(Some(ForgeDelivery {
            delivered: rec.delivered,
            pending,
            last_error: rec.last_error,
            last_error_time: convert::timestamp(rec.last_error_ms),
            last_delivered: convert::timestamp(rec.last_delivered_ms),
        }))
    }

    /// An id the forge gave back.
    fn id(&self, key: &[u8]) -> Option<ForgeId> {
        let v = self.store.tree(T::ForgeIds).get(key).ok().flatten()?;
        Some(ForgeId {
            id: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            attempt: v.get(16..20).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes),
            rank: v.get(20).copied().unwrap_or(0),
        })
    }

    /// Keeps an id the forge gave back (a failure only means a new one
    /// next time). Value: id, time (ms), attempt, rank, big-endian.
    fn keep_id(&self, key: &[u8], id: ForgeId) {
        let mut value = id.id.to_be_bytes().to_vec();
        value.extend_from_slice(&now_ms().to_be_bytes());
        value.extend_from_slice(&id.attempt.to_be_bytes());
        value.push(id.rank);
        let mut ws = WriteSet::default();
        ws.put_raw(T::ForgeIds, key, value);
        if let Err(e) = self.store.commit(&ws) {
            tracing::warn!(error = %e, "cannot keep an id the forge gave back");
        }
    }

    /// Forgets an id the forge no longer knows.
    fn forget_id(&self, key: &[u8]) {
        let mut ws = WriteSet::default();
        ws.delete(T::ForgeIds, key);
        if let Err(e) = self.store.commit(&ws) {
            tracing::warn!(error = %e, "cannot forget an id the forge gave back");
        }
    }

    /// Forgets ids older than [`IDS_KEPT_MS`].
    fn prune_ids(&self) -> Result<()> {
        let cutoff = now_ms() - IDS_KEPT_MS;
        let mut ws = WriteSet::default();
        for kv in self.store.tree(T::ForgeIds).iter() {
            let (k, v) = kv?;
            let at = v.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, i64::from_be_bytes);
            if at < cutoff {
                ws.delete(T::ForgeIds, k);
            }
            // In small write sets.
            if ws.len() >= 1000 {
                self.store.commit(&std::mem::take(&mut ws))?;
            }
        }
        self.store.commit(&ws)
    }
}

/// `<prefix>/<pipeline>` for a run, `<prefix>/<pipeline>/<job>` for a job;
/// `<prefix>/<pipeline>/<job> deployment <id> to <environment>` for a
/// deployment (in logs: the forge shows deployments by environment).
pub fn context_name(conn: &ForgeConnection, s: &StatusRecord) -> String {
    let prefix = if conn.context_prefix.is_empty() { connection::DEFAULT_PREFIX } else { &conn.context_prefix };
    if s.deployment != 0 {
        return format!("{prefix}/{}/{} deployment {} to {}", s.pipeline, s.job, s.deployment, s.environment);
    }
    match s.job.as_str() {
        "" => format!("{prefix}/{}", s.pipeline),
        job => format!("{prefix}/{}/{job}", s.pipeline),
    }
}

/// The statuses read, by context (commit, pipeline, job, deployment — and
/// attempt, for check runs, since each attempt has its own; a deployment is
/// one whatever the attempt), each with only its newest, ordered by when
/// their newest was written.
fn coalesce(read: Vec<(Vec<u8>, StatusRecord)>, per_attempt: bool) -> Vec<Context> {
    let mut at: HashMap<(String, String, String, u32, u64), usize> = HashMap::new();
    let mut contexts: Vec<Option<Context>> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    for (key, rec) in read {
        let attempt = if per_attempt && rec.deployment == 0 { rec.attempt } else { 0 };
        let id = (rec.commit.clone(), rec.pipeline.clone(), rec.job.clone(), attempt, rec.deployment);
        match at.get(&id) {
            Some(&i) => {
                let c = contexts[i].as_mut().expect("present");
                c.keys.push(key);
                c.newest = rec;
                order.retain(|&j| j != i);
                order.push(i);
            }
            None => {
                at.insert(id, contexts.len());
                order.push(contexts.len());
                contexts.push(Some(Context { keys: vec![key], newest: rec }));
            }
        }
    }
    order.into_iter().filter_map(|i| contexts[i].take()).collect()
}

/// The runs of `repo` that reported check runs on `sha`.
pub fn runs_with_check_runs(store: &Store, repo: &str, sha: &str) -> Result<Vec<RunId>> {
    let prefix = ids_key(repo, sha, "check:");
    let mut runs = Vec::new();
    for kv in store.tree(T::ForgeIds).scan_prefix(&prefix) {
        let (key, _) = kv?;
        let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        if let Some(id) = rest.split(':').next().and_then(|r| RunId::parse(r).ok())
            && !runs.contains(&id)
        {
            runs.push(id);
        }
    }
    Ok(runs)
}

/// The `forge_ids` key of `what` for a commit of a repository.
fn ids_key(repo: &str, commit: &str, what: &str) -> Vec<u8> {
    [repo.as_bytes(), &[0], commit.as_bytes(), &[0], what.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(commit: &str, job: &str, status: Status) -> StatusRecord {
        StatusRecord {
            commit: commit.into(),
            pipeline: "ci".into(),
            job: job.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    #[test]
    fn deployments_are_contexts_of_their_own_whatever_the_attempt() {
        let deploying = |id: u64, attempt: u32, state: DeploymentState| StatusRecord {
            deployment: id,
            environment: "production".into(),
            deployment_state: state as i32,
            attempt,
            ..status("a", "deploy", Status::Running)
        };
        let read = vec![
            (b"1".to_vec(), status("a", "deploy", Status::Running)),
            (b"2".to_vec(), deploying(5, 1, DeploymentState::Queued)),
            (b"3".to_vec(), deploying(6, 1, DeploymentState::Queued)),
            (b"4".to_vec(), deploying(5, 2, DeploymentState::InProgress)),
            (b"5".to_vec(), status("a", "deploy", Status::Success)),
        ];
        for per_attempt in [false, true] {
            let got: Vec<(u64, i32, usize)> = coalesce(read.clone(), per_attempt)
                .into_iter()
                .map(|c| (c.newest.deployment, c.newest.deployment_state, c.keys.len()))
                .collect();
            assert_eq!(
                got,
                [(6, DeploymentState::Queued as i32, 1), (5, DeploymentState::InProgress as i32, 2), (0, 0, 2)],
                "per attempt: {per_attempt}"
            );
        }
        let conn = ForgeConnection::default();
        assert_eq!(
            context_name(&conn, &deploying(5, 1, DeploymentState::Queued)),
            "viaduct/ci/deploy deployment 5 to production"
        );
    }

    #[test]
    fn only_the_newest_status_of_a_context_is_sent() {
        let read = vec![
            (b"1".to_vec(), status("a", "", Status::Queued)),
            (b"2".to_vec(), status("a", "build", Status::Queued)),
            (b"3".to_vec(), status("a", "", Status::Running)),
            (b"4".to_vec(), status("b", "", Status::Queued)),
            (b"5".to_vec(), status("a", "build", Status::Success)),
        ];
        let got: Vec<(String, String, i32, usize)> = coalesce(read, false)
            .into_iter()
            .map(|c| (c.newest.commit, c.newest.job, c.newest.status, c.keys.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "".into(), Status::Running as i32, 2),
                ("b".into(), "".into(), Status::Queued as i32, 1),
                ("a".into(), "build".into(), Status::Success as i32, 2),
            ]
        );
    }
}
