//! Where runs of repositories come from: pushes, webhooks, polls, manual
//! triggers and schedules.
//!
//! # One trigger path
//! Every way code arrives — a push to a hosted repository (its hook calls
//! `Repos.Sync`), a forge webhook or a poll of a mirror (fetch, then sync),
//! a server start (sync everything) — ends in [`Triggers::sync`]: list the
//! repository's branch and tag tips, compare them with the tips the server
//! last acted on (`ref_state`), and for each ref that moved read
//! `.viaduct/pipeline.yml` at the new commit and start a run if its `on:`
//! says so. The new tip is recorded in the same transaction as the run, so
//! a push is acted on exactly once whatever crashes when, and pushes made
//! while the server was down are picked up when it starts.
//!
//! The repositories themselves (records, paths, credentials) are
//! [`crate::repos`]'; this module decides what their events start.
//!
//! Submodules: [`schedule`] (cron), [`webhooks`] (GitHub, GitLab, Gitea /
//! Forgejo).

pub mod schedule;
pub mod webhooks;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use viaduct_pipeline::spec::Pipeline;
use viaduct_proto::v1::{MirrorRepo, RunSource, SourcePlan};

use crate::{
    engine::{Engine, commit_status::NotRun},
    error::{Error, Result},
    git::{self, PIPELINE_PATH},
    launch::{self, Launch, OnInvalid, Origin},
    launch::{Cause, resolve},
    repos::{HOSTED, MIRROR, Repos, blocking, ref_key},
    store::{Store, T, WriteSet, keys::RunId, now_ms, records::RepoRecord},
};

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Runs it started.
    pub runs: Vec<RunId>,
    /// Refs that moved.
    pub refs_changed: u32,
}

/// "Re-run" pressed on a check run Viaduct reported (GitHub App).
#[derive(Debug, Clone)]
pub struct Rerun {
    /// The app that owns the check run (`check_run.app.id`).
    pub app_id: String,
    /// What Viaduct put in `external_id`: a run or job id.
    pub external_id: String,
    /// The check run's commit.
    pub head_sha: String,
    /// Who pressed it (for the log).
    pub sender: String,
}

/// A pull (merge) request event from a forge.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// Its number.
    pub number: u32,
    /// The commit at its head.
    pub head_sha: String,
    /// Its source branch.
    pub head_branch: String,
    /// The branch it would merge into.
    pub base_branch: String,
    /// The ref on the remote that holds its head (`refs/pull/N/head`).
    pub remote_ref: String,
    /// The repository its head is in, as the forge names it (`owner/name`).
    pub head_repo: String,
    /// Its head is in another repository than the base.
    pub fork: bool,
    /// The forge account that opened it.
    pub sender: String,
    /// The forge's relation of the sender to the repository (GitHub's
    /// `author_association`), empty where the forge has none.
    pub sender_association: String,
}

/// What starts a run of a repository.
struct RepoEvent {
    event: &'static str,
    git_ref: String,
    commit: String,
    base_branch: String,
    pull_request: u32,
    inputs: HashMap<String, String>,
    priority: Option<u32>,
    /// Scheduled runs: (cron expression, slot in unix seconds).
    schedule: Option<(String, i64)>,
    /// Pull requests: the forge's facts, the commit whose pipeline file
    /// decides whether it runs (the base branch's tip), and what the
    /// repository's policy decided.
    pull: Option<(PullRequest, String, crate::trust::Decision)>,
    /// Who started a run by hand.
    sender: String,
}

/// What starts runs: repository events (pushes, pull requests, runs by
/// hand) and schedules.
pub struct Triggers {
    engine: Arc<Engine>,
    store: Arc<Store>,
    repos: Arc<Repos>,
    schedules: schedule::Schedules,
    plugins: Arc<crate::plugins::PluginRegistry>,
}

impl Triggers {
    /// Triggers of `repos`' events and of `schedules`, starting runs on
    /// `engine` (pipelines resolve `uses:` against `plugins`).
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<Store>,
        repos: Arc<Repos>,
        schedules: schedule::Schedules,
        plugins: Arc<crate::plugins::PluginRegistry>,
    ) -> Arc<Self> {
        Arc::new(Self { engine, store, repos, schedules, plugins })
    }

    /// The repositories whose events these are.
    pub fn repos(&self) -> &Arc<Repos> {
        &self.repos
    }

    /// Creates a mirror of `m.url` and fetches it once; the refs it has now
    /// are recorded without starting runs. If that first fetch fails, nothing
    /// is kept (the caller fixes the URL or credentials and creates again).
    pub async fn create_mirror(&self, name: &str, m: &MirrorRepo) -> Result<RepoRecord> {
        self.repos.add_mirror(name, m).await?;
        if let Err(e) = self.sync(name).await {
            self.repos.delete(name).await?;
            return Err(e);
        }
        tracing::info!(repo = name, url = m.url, "mirror created");
        self.repos.get(name)
    }

    /// Deletes a repository and forgets its schedules.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.repos.delete(name).await?;
        self.schedules.set(&schedule::repo_source(name), Vec::new());
        Ok(())
    }

    /// The plugin registry pipelines resolve `uses:` against.
    pub fn plugins(&self) -> &crate::plugins::PluginRegistry {
        &self.plugins
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Fetches a mirror (not a hosted repository), then starts runs for the
    /// refs that moved. See the module docs.
    pub async fn sync(&self, name: &str) -> Result<SyncOutcome> {
        self.sync_as(name, "").await
    }

    /// [`Triggers::sync`] for `pusher` (empty: not known), who the runs of
    /// pushed refs are recorded as sent by.
    pub async fn sync_as(&self, name: &str, pusher: &str) -> Result<SyncOutcome> {
        let _guard = self.repos.lock_for(name).lock_owned().await;
        let mut rec = self.repos.get(name)?;
        let path = self.repos.path(name);
        if rec.kind == MIRROR {
            let (p, url) = (path.clone(), rec.url.clone());
            let fetched = match self.repos.fetch_credentials(&rec) {
                Ok(creds) => blocking(move || git::fetch(&p, &url, &[], creds.as_ref())).await,
                Err(e) => Err(e),
            };
            match fetched {
                Ok(default) => {
                    rec.last_error.clear();
                    if let Some(d) = default {
                        rec.default_branch = d;
                    }
                }
                Err(e) => {
                    rec.last_error = e.to_string();
                    rec.last_sync_ms = now_ms();
                    let ws = self.repos.save(name, &rec, WriteSet::default())?;
                    self.store.commit_durable(&ws).await?;
                    tracing::warn!(repo = name, error = %e, "fetching the mirror failed");
                    return Err(Error::FailedPrecondition(format!("fetching {} failed: {e}", rec.url)));
                }
            }
        }
        rec.last_sync_ms = now_ms();
        let p = path.clone();
        let current = blocking(move || git::refs(&p)).await?;
        let mut stored = BTreeMap::new();
        for kv in self.store.tree(T::RefState).scan_prefix(ref_key(name, "")) {
            let (k, v) = kv?;
            let r = String::from_utf8_lossy(&k[name.len() + 1..]).into_owned();
            stored.insert(r, String::from_utf8_lossy(&v).into_owned());
        }
        let mut outcome = SyncOutcome::default();
        let mut ws = WriteSet::default();
        let baseline = !rec.baselined;
        rec.baselined = true;
        ws = self.repos.save(name, &rec, ws)?;
        for (git_ref, sha) in &current {
            if stored.get(git_ref) == Some(sha) {
                continue;
            }
            ws.put_raw(T::RefState, ref_key(name, git_ref), sha.clone().into_bytes());
            if baseline || git_ref.starts_with("refs/viaduct/") {
                continue;
            }
            outcome.refs_changed += 1;
            let event = RepoEvent {
                event: "push",
                git_ref: git_ref.clone(),
                commit: sha.clone(),
                base_branch: String::new(),
                pull_request: 0,
                inputs: HashMap::new(),
                priority: None,
                schedule: None,
                pull: None,
                sender: pusher.to_string(),
            };
            // The ref state (and the repository record) ride with the run.
            if let Some(id) = self.launch(name, &rec, event, std::mem::take(&mut ws)).await? {
                tracing::info!(repo = name, git_ref, sha, run = %id, "push started a run");
                outcome.runs.push(id);
            }
        }
        for gone in stored.keys().filter(|r| !current.contains_key(*r) && !r.starts_with("pr/")) {
            ws.delete(T::RefState, ref_key(name, gone));
        }
        self.store.commit_durable(&ws).await?;
        if baseline {
            tracing::info!(
                repo = name,
                refs = current.len(),
                "recorded the mirror's refs (no runs for what was already there)"
            );
        }
        let default_ref = format!("refs/heads/{}", rec.default_branch);
        if baseline || stored.get(&default_ref) != current.get(&default_ref) {
            self.refresh_schedules(name, &rec, current.get(&default_ref).cloned()).await;
        }
        Ok(outcome)
    }

    /// A pull request was opened or updated: fetch its head (and its base
    /// branch), and start a `pull_request` run of the head commit if the
    /// pipeline file *of the base branch* asks for one — a pull request
    /// cannot make itself run. Its trust and whether it waits for approval
    /// come from the repository's policy (see `trust`).
    pub async fn pull_request(&self, name: &str, pr: PullRequest) -> Result<Option<RunId>> {
        let _guard = self.repos.lock_for(name).lock_owned().await;
        let rec = self.repos.get(name)?;
        let path = self.repos.path(name);
        let local = format!("refs/viaduct/pull/{}", pr.number);
        let base_local = format!("refs/viaduct/base/{}", pr.number);
        if rec.kind == MIRROR {
            let specs =
                vec![format!("+{}:{local}", pr.remote_ref), format!("+refs/heads/{}:{base_local}", pr.base_branch)];
            let (p, url) = (path.clone(), rec.url.clone());
            let creds = self.repos.fetch_credentials(&rec)?;
            blocking(move || git::fetch(&p, &url, &specs, creds.as_ref())).await?;
        }
        let base_ref = if rec.kind == MIRROR { base_local } else { format!("refs/heads/{}", pr.base_branch) };
        let (p, r) = (path.clone(), base_ref.clone());
        let Ok(base_tip) = blocking(move || git::resolve(&p, &r)).await else {
            tracing::info!(repo = name, pr = pr.number, base = %pr.base_branch, "pull request into an unknown branch: ignored");
            return Ok(None);
        };
        // Acted on once per head commit and base branch: a pull request
        // moved to another base is a new event (its checks there may differ).
        let key = ref_key(name, &format!("pr/{}", pr.number));
        let state = format!("{} {}", pr.head_sha, pr.base_branch);
        let seen = self.store.tree(T::RefState).get(&key)?;
        if seen.as_deref() == Some(state.as_bytes()) {
            return Ok(None);
        }
        let mut ws = WriteSet::default();
        ws.put_raw(T::RefState, key, state.into_bytes());
        let facts = RunSource {
            event: "pull_request".into(),
            pull_request: pr.number,
            fork: pr.fork,
            head_repo: pr.head_repo.clone(),
            sender: pr.sender.clone(),
            sender_association: pr.sender_association.clone(),
            ..Default::default()
        };
        let decision = crate::trust::of_pull_request(rec.pull_requests.as_ref(), &facts);
        tracing::info!(repo = name, pr = pr.number, fork = pr.fork, sender = %pr.sender, trust = ?decision.trust, "pull request");
        let event = RepoEvent {
            event: "pull_request",
            git_ref: format!("refs/heads/{}", pr.head_branch),
            commit: pr.head_sha.clone(),
            base_branch: pr.base_branch.clone(),
            pull_request: pr.number,
            inputs: HashMap::new(),
            priority: None,
            schedule: None,
            pull: Some((pr.clone(), base_tip, decision)),
            sender: String::new(),
        };
        let id = self.launch(name, &rec, event, ws).await?;
        if let Some(id) = id {
            tracing::info!(repo = name, pr = pr.number, run = %id, "pull request started a run");
        }
        Ok(id)
    }

    /// Starts a run by hand at `what` (branch, tag, ref or commit; empty =
    /// the default branch).
    pub async fn run_by_hand(
        &self,
        name: &str,
        what: &str,
        inputs: HashMap<String, String>,
        priority: Option<u32>,
        actor: &str,
    ) -> Result<RunId> {
        let rec = self.repos.get(name)?;
        let path = self.repos.path(name);
        let what = if what.is_empty() { rec.default_branch.clone() } else { what.to_string() };
        // A ref exactly as it exists (a branch, a tag, or a full ref name),
        // run at its tip — or a commit id, run without a branch: never an
        // expression (`main~3`), which would run an older commit under a
        // branch's name and pass the rules (environments, secret scopes)
        // made for that branch.
        let p = path.clone();
        let refs = blocking(move || git::refs(&p)).await?;
        let named = [what.clone(), format!("refs/heads/{what}"), format!("refs/tags/{what}")]
            .into_iter()
            .find(|r| r.starts_with("refs/") && refs.contains_key(r));
        let (git_ref, commit) = match named {
            Some(r) => {
                let commit = refs[&r].clone();
                (r, commit)
            }
            None if what.len() >= 7 && what.len() <= 40 && what.bytes().all(|b| b.is_ascii_hexdigit()) => {
                let (p, w) = (path.clone(), what.clone());
                (String::new(), blocking(move || git::resolve(&p, &w)).await?)
            }
            None => {
                return Err(Error::NotFound(format!(
                    "no branch, tag or commit `{what}` in repository `{name}` (a branch or tag name, a full ref, or a \
                     commit id)"
                )));
            }
        };
        let event = RepoEvent {
            event: "manual",
            git_ref,
            commit,
            base_branch: String::new(),
            pull_request: 0,
            inputs,
            priority,
            schedule: None,
            pull: None,
            sender: actor.to_string(),
        };
        self.launch(name, &rec, event, WriteSet::default()).await?.ok_or_else(|| {
            Error::precondition(format!("the pipeline of `{name}` does not allow manual runs (`on:` has no `manual`)"))
        })
    }

    /// The run a repository event asks for, if its pipeline file exists and
    /// its `on:` matches. An invalid file gives a failed run that carries the
    /// errors (for pushes and pull requests) or an error (manual triggers).
    /// For a pull request, the base branch's file decides whether it runs;
    /// the head's file says what runs.
    async fn launch(&self, name: &str, rec: &RepoRecord, ev: RepoEvent, extra: WriteSet) -> Result<Option<RunId>> {
        let path = self.repos.path(name);
        let sha = ev.commit.clone();
        let (yaml, info) = blocking(move || {
            Ok((
                git::read_file(&path, &sha, PIPELINE_PATH, launch::MAX_PIPELINE_BYTES)?,
                git::commit_info(&path, &sha)?,
            ))
        })
        .await?;
        if let Some((pr, base_tip, _)) = &ev.pull {
            let (path, tip) = (self.repos.path(name), base_tip.clone());
            let base_yaml =
                blocking(move || git::read_file(&path, &tip, PIPELINE_PATH, launch::MAX_PIPELINE_BYTES)).await?;
            let mut not_run = None;
            let refused = match &base_yaml {
                None => Some("the base branch has no pipeline file"),
                Some(git::FileText::TooLarge(_)) => Some("the base branch's pipeline file is too large"),
                Some(git::FileText::Whole(y)) => match resolve::parse(PIPELINE_PATH, y) {
                    Err(_) => Some("the base branch's pipeline file is invalid"),
                    Ok(p) if !wanted(&p, "pull_request", &pr.head_branch, "", &ev.base_branch) => {
                        not_run = Some(p);
                        Some("the base branch's pipeline does not run pull requests into it")
                    }
                    Ok(_) => None,
                },
            };
            if let Some(why) = refused {
                tracing::info!(repo = name, pr = pr.number, base = %ev.base_branch, "{why}: no run");
                let mut extra = extra;
                // A required check of that pipeline must not wait forever.
                if let Some(p) = not_run.filter(|_| rec.forge.as_ref().is_some_and(|f| !f.kind.is_empty())) {
                    let (pipeline, jobs) = planned_names(&p, name, &ev);
                    let what = NotRun {
                        repo: name,
                        commit: &ev.commit,
                        git_ref: &ev.git_ref,
                        pipeline: &pipeline,
                        jobs,
                        why: "the base branch's pipeline does not run pull requests into it",
                    };
                    self.engine.statuses_not_run(&mut extra, &what)?;
                }
                self.store.commit_durable(&extra).await?;
                self.engine.signals().statuses_changed();
                return Ok(None);
            }
        }
        let Some(yaml) = yaml else {
            tracing::debug!(repo = name, commit = %ev.commit, "no {PIPELINE_PATH}: nothing to run");
            self.store.commit_durable(&extra).await?;
            return Ok(None);
        };
        let branch = ev.git_ref.strip_prefix("refs/heads/").unwrap_or_default().to_string();
        let tag = ev.git_ref.strip_prefix("refs/tags/").unwrap_or_default().to_string();
        let source = RunSource {
            event: ev.event.into(),
            repo: name.to_string(),
            r#ref: ev.git_ref.clone(),
            branch: branch.clone(),
            tag: tag.clone(),
            commit: ev.commit.clone(),
            author: info.author,
            message: info.summary,
            base_branch: ev.base_branch.clone(),
            pull_request: ev.pull_request,
            schedule: ev.schedule.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            scheduled_for: ev.schedule.as_ref().and_then(|s| crate::convert::timestamp(s.1 * 1000)),
            head_repo: ev.pull.as_ref().map(|p| p.0.head_repo.clone()).unwrap_or_default(),
            fork: ev.pull.as_ref().is_some_and(|p| p.0.fork),
            sender: ev.pull.as_ref().map_or_else(|| ev.sender.clone(), |p| p.0.sender.clone()),
            sender_association: ev.pull.as_ref().map(|p| p.0.sender_association.clone()).unwrap_or_default(),
        };
        let clone_url = if rec.kind == MIRROR { rec.url.clone() } else { self.repos.clone_url(name) };
        let source_plan =
            SourcePlan { repo: name.to_string(), commit: ev.commit.clone(), r#ref: ev.git_ref.clone(), clone_url };
        let decision = ev.pull.as_ref().map(|p| p.2.clone());
        let cause = Cause {
            source: source.clone(),
            inputs: ev.inputs,
            priority: ev.priority,
            pipeline_ref: String::new(),
            trust: decision.as_ref().map_or(viaduct_proto::v1::Trust::Trusted, |d| d.trust),
            approval: decision.and_then(|d| d.approval),
            request_key: None,
            reports_status: rec.forge.as_ref().is_some_and(|f| !f.kind.is_empty()),
            keep_on_failure: false,
        };
        // Pull requests were decided by the base branch's file above.
        let event = ev.event;
        let accepts = |p: &Pipeline| ev.pull.is_some() || wanted(p, event, &branch, &tag, &ev.base_branch);
        let origin = match yaml {
            git::FileText::Whole(yaml) => Origin::File { name: PIPELINE_PATH.into(), yaml },
            git::FileText::TooLarge(bytes) => Origin::Oversized { name: PIPELINE_PATH.into(), bytes },
        };
        let launch = Launch {
            origin,
            cause,
            on_invalid: if event == "manual" { OnInvalid::Refuse } else { OnInvalid::FailedRun },
            checkout: Some(source_plan),
            accepts: Some(&accepts),
        };
        let id = launch::start(&self.engine, &self.store, &self.plugins, launch, extra).await?;
        if id.is_none() {
            tracing::debug!(repo = name, event, git_ref = %ev.git_ref, "`on:` does not ask for this event");
        }
        Ok(id)
    }

    /// Retries the run a check run reports, when "Re-run" was pressed on
    /// it: only a check run of this repository's own app (a repository
    /// webhook hears other apps' check runs too), naming a run of this
    /// repository at that commit.
    pub async fn rerun(&self, name: &str, rerun: &Rerun) -> Result<RunId> {
        let rec = self.repos.get(name)?;
        let ours = rec.forge.as_ref().is_some_and(|f| !f.app_id.is_empty() && f.app_id == rerun.app_id);
        if !ours {
            return Err(Error::not_found(format!("app {} is not this repository's forge app", rerun.app_id)));
        }
        let run_part = rerun.external_id.split('.').next().unwrap_or_default();
        let id = RunId::parse(run_part)?;
        let run = self.engine.get_run(id)?;
        let source = run.source.unwrap_or_default();
        if source.repo != name || source.commit != rerun.head_sha {
            return Err(Error::not_found(format!("run {id} is not a run of `{name}` at {}", rerun.head_sha)));
        }
        tracing::info!(repo = name, run = %id, sender = %rerun.sender, "re-run asked on the forge");
        self.engine.retry_run(id, None, false).await?;
        Ok(id)
    }

    /// Retries every run of `name` at `sha` that reported check runs, when
    /// "Re-run all checks" was pressed (only for the repository's own app);
    /// runs that are still going are left alone.
    pub async fn rerun_suite(&self, name: &str, app_id: &str, sha: &str) -> Result<Vec<RunId>> {
        let rec = self.repos.get(name)?;
        if !rec.forge.as_ref().is_some_and(|f| !f.app_id.is_empty() && f.app_id == app_id) {
            return Err(Error::not_found(format!("app {app_id} is not this repository's forge app")));
        }
        let mut retried = Vec::new();
        for id in crate::forges::runs_with_check_runs(&self.store, name, sha)? {
            match self.engine.retry_run(id, None, false).await {
                Ok(()) => retried.push(id),
                Err(e) => tracing::info!(repo = name, run = %id, error = %e, "not retried"),
            }
        }
        tracing::info!(repo = name, commit = sha, runs = ?retried, "re-run of all checks asked on the forge");
        Ok(retried)
    }

    /// On start: rewrites the hooks of hosted repositories (the server
    /// binary may have moved), then syncs every repository — pushes made
    /// while the server was down start their runs now — and loads schedules.
    pub async fn start(self: &Arc<Self>) {
        let repos = match self.repos.list() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list repositories");
                return;
            }
        };
        for (name, rec) in repos {
            if rec.kind == HOSTED
                && let Err(e) = self.repos.refresh_hook(&name, &rec).await
            {
                tracing::warn!(repo = %name, error = %e, "cannot refresh the hook");
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                match this.sync(&name).await {
                    Ok(o) if o.refs_changed > 0 => {
                        tracing::info!(repo = %name, refs = o.refs_changed, runs = o.runs.len(), "caught up with pushes made while the server was down")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(repo = %name, error = %e, "startup sync failed"),
                }
                // Schedules from the default branch, even if nothing moved.
                if let Ok(rec) = this.repos.get(&name) {
                    let tip = {
                        let p = this.repos.path(&name);
                        let b = rec.default_branch.clone();
                        blocking(move || git::resolve(&p, &b)).await.ok()
                    };
                    this.refresh_schedules(&name, &rec, tip).await;
                }
            });
        }
        self.load_pipeline_schedules();
        schedule::spawn(Arc::clone(self));
        self.spawn_poller();
    }

    /// Fetches mirrors whose poll interval has passed, every second; prunes
    /// old webhook delivery ids and submit request ids every hour.
    fn spawn_poller(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut ticks: u64 = 0;
            loop {
                tick.tick().await;
                ticks += 1;
                if ticks.is_multiple_of(3600) {
                    webhooks::prune_deliveries(&this);
                    if let Err(e) = this.engine.prune_request_keys() {
                        tracing::warn!(error = %e, "cannot prune submit request ids");
                    }
                }
                let Ok(repos) = this.repos.list() else { continue };
                let now = now_ms();
                for (name, rec) in repos {
                    let due = rec.kind == MIRROR
                        && rec.poll_interval_s > 0
                        && now - rec.last_sync_ms >= i64::from(rec.poll_interval_s) * 1000;
                    if due && let Err(e) = this.sync(&name).await {
                        tracing::debug!(repo = %name, error = %e, "poll failed");
                    }
                }
            }
        });
    }
}

/// The names a run of `p` for this event would have — its own
/// (interpolated) and its jobs' (a matrix job's each) — as its statuses
/// would carry them; the name as written and no jobs if it cannot be
/// planned.
fn planned_names(p: &Pipeline, repo: &str, ev: &RepoEvent) -> (String, Vec<String>) {
    let branch = ev.git_ref.strip_prefix("refs/heads/").map(str::to_string);
    let ctx = viaduct_pipeline::plan::PlanContext {
        event: ev.event.to_string(),
        branch,
        commit: Some(ev.commit.clone()),
        repo: Some(repo.to_string()),
        ..Default::default()
    };
    match viaduct_pipeline::plan::plan(p, &ctx) {
        Ok(plan) => (plan.name, plan.jobs.into_iter().map(|j| j.name).collect()),
        Err(_) => (p.name.clone(), Vec::new()),
    }
}

/// Whether `on:` asks for `event` at this branch or tag.
fn wanted(p: &Pipeline, event: &str, branch: &str, tag: &str, base: &str) -> bool {
    fn opt(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    match event {
        "push" => p.triggers.matches_push(opt(branch), opt(tag)),
        "pull_request" => p.triggers.matches_pull_request(base),
        "manual" => p.triggers.allows_manual(),
        _ => true,
    }
}
