//! The repositories the server holds: hosted ones (pushed to over git
//! smart HTTP, [`smart_http`]) and mirrors of repositories on a forge —
//! their records, where they live on disk, their URLs, credentials and
//! source archives. What their events start is [`crate::triggers`]'.

pub mod smart_http;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use viaduct_proto::v1::{ForgeConnection, MirrorRepo};

use crate::{
    error::{Error, Result},
    git,
    secrets::SecretBox,
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{RepoRecord, SCHEMA_VERSION},
    },
};

/// "hosted" or "mirror".
pub const HOSTED: &str = "hosted";
/// See [`HOSTED`].
pub const MIRROR: &str = "mirror";

/// See the module docs.
pub struct Repos {
    store: Arc<Store>,
    secrets: Arc<SecretBox>,
    data_dir: PathBuf,
    hook: git::Hook,
    public_url: OnceLock<String>,
    /// One change (or sync) at a time per repository.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("invalid repository name `{name}`: use 1–100 of A–Z a–z 0–9 - _ .")))
    }
}

pub(crate) fn ref_key(repo: &str, git_ref: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.len() + git_ref.len() + 1);
    k.extend_from_slice(repo.as_bytes());
    k.push(0);
    k.extend_from_slice(git_ref.as_bytes());
    k
}

/// Runs a blocking git operation off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("git task failed: {e}")))?
}

impl Repos {
    /// Repositories under `data_dir/repos`, their records in `store`
    /// (mirror credentials sealed by `secrets`). `exe` is the server binary
    /// (run by the hooks of hosted repositories).
    pub fn new((store, secrets): (Arc<Store>, Arc<SecretBox>), data_dir: PathBuf, exe: PathBuf) -> Arc<Self> {
        let hook = git::Hook { exe, data_dir: data_dir.clone() };
        Arc::new(Self { store, secrets, data_dir, hook, public_url: OnceLock::new(), locks: Mutex::default() })
    }

    /// Sets the URL clients reach the server at (for clone and webhook URLs).
    pub fn set_public_url(&self, url: String) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_string());
    }

    pub(crate) fn public_url(&self) -> &str {
        self.public_url.get().map_or("http://127.0.0.1:7700", String::as_str)
    }

    /// Where the server keeps repository `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.data_dir.join("repos").join(format!("{name}.git"))
    }

    /// The directory of bare repositories (git http-backend's project root).
    pub fn repos_dir(&self) -> PathBuf {
        self.data_dir.join("repos")
    }

    /// The URL `git` pushes to and clones from for hosted repository `name`.
    pub fn clone_url(&self, name: &str) -> String {
        format!("{}/git/{name}.git", self.public_url())
    }

    /// Where forges send webhooks for mirror `name`.
    pub fn webhook_url(&self, name: &str) -> String {
        format!("{}/webhooks/{name}", self.public_url())
    }

    /// The lock that orders changes and syncs of repository `name`.
    pub(crate) fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(name.to_string()).or_default())
    }

    /// A repository.
    pub fn get(&self, name: &str) -> Result<RepoRecord> {
        self.store
            .get(T::Repos, name.as_bytes())?
            .ok_or_else(|| Error::not_found(format!("repository `{name}` not found")))
    }

    /// Every repository.
    pub fn list(&self) -> Result<Vec<(String, RepoRecord)>> {
        let mut out = Vec::new();
        for kv in self.store.tree(T::Repos).iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(T::Repos, &v)?));
        }
        Ok(out)
    }

    /// Adds the record of `name` to `extra`.
    pub(crate) fn save(&self, name: &str, rec: &RepoRecord, extra: WriteSet) -> Result<WriteSet> {
        let mut ws = extra;
        ws.put(T::Repos, name.as_bytes(), rec);
        Ok(ws)
    }

    /// Creates a hosted repository (an empty bare repository with a hook).
    pub async fn create_hosted(&self, name: &str, default_branch: &str) -> Result<RepoRecord> {
        check_name(name)?;
        let _guard = self.lock_for(name).lock_owned().await;
        if self.store.get::<RepoRecord>(T::Repos, name.as_bytes())?.is_some() {
            return Err(Error::AlreadyExists(format!("repository `{name}` already exists")));
        }
        let branch = if default_branch.is_empty() { "main".to_string() } else { default_branch.to_string() };
        let (path, hook, n, b) = (self.path(name), self.hook.clone(), name.to_string(), branch.clone());
        blocking(move || git::create_bare(&path, &n, &b, &hook)).await?;
        let now = now_ms();
        let rec = RepoRecord {
            schema: SCHEMA_VERSION,
            kind: HOSTED.into(),
            default_branch: branch,
            created_ms: now,
            last_sync_ms: now,
            baselined: true,
            ..Default::default()
        };
        let ws = self.save(name, &rec, WriteSet::default())?;
        self.store.commit_durable(&ws).await?;
        tracing::info!(repo = name, "hosted repository created");
        Ok(rec)
    }

    /// Records a mirror of `m.url` (not fetched yet: see
    /// `Triggers::create_mirror`).
    pub async fn add_mirror(&self, name: &str, m: &MirrorRepo) -> Result<RepoRecord> {
        check_name(name)?;
        if m.url.is_empty() {
            return Err(Error::invalid("a mirror needs the URL of the repository to follow"));
        }
        if !m.credentials.is_empty() {
            crate::secrets::check_name(&m.credentials)?;
            self.secret(&m.credentials)?;
        }
        let _guard = self.lock_for(name).lock_owned().await;
        if self.store.get::<RepoRecord>(T::Repos, name.as_bytes())?.is_some() {
            return Err(Error::AlreadyExists(format!("repository `{name}` already exists")));
        }
        let secret = if m.webhook_secret.is_empty() { random_secret()? } else { m.webhook_secret.clone() };
        if let Some(p) = &m.pull_requests {
            check_policy(p)?;
        }
        let forge = m.forge.as_ref().map(|f| self.forge_connection(name, &m.url, f)).transpose()?.flatten();
        let rec = RepoRecord {
            schema: SCHEMA_VERSION,
            pull_requests: m.pull_requests.clone(),
            kind: MIRROR.into(),
            url: m.url.clone(),
            default_branch: "main".into(),
            webhook_secret: secret,
            poll_interval_s: m.poll_interval_seconds,
            created_ms: now_ms(),
            credentials: m.credentials.clone(),
            forge,
            ..Default::default()
        };
        let ws = self.save(name, &rec, WriteSet::default())?;
        self.store.commit_durable(&ws).await?;
        Ok(rec)
    }

    /// Replaces a repository's pull request policy, retention policy or
    /// forge connection (`None`: unchanged; a connection without a kind
    /// removes it).
    pub async fn update(
        &self,
        name: &str,
        pull_requests: Option<viaduct_proto::v1::PullRequestPolicy>,
        retention: Option<viaduct_proto::v1::RetentionPolicy>,
        forge: Option<ForgeConnection>,
    ) -> Result<RepoRecord> {
        if pull_requests.is_none() && retention.is_none() && forge.is_none() {
            return Err(Error::invalid("set `pull_requests`, `retention` or `forge` (what changes)"));
        }
        if let Some(policy) = &pull_requests {
            check_policy(policy)?;
        }
        if let Some(policy) = &retention {
            crate::retention::check(policy)?;
        }
        let _guard = self.lock_for(name).lock_owned().await;
        let mut rec = self.get(name)?;
        let mut extra = WriteSet::default();
        if let Some(policy) = pull_requests {
            rec.pull_requests = Some(policy);
            tracing::info!(repo = name, "pull request policy changed");
        }
        if let Some(change) = retention {
            rec.retention = crate::retention::merged(rec.retention.take(), change);
            tracing::info!(repo = name, policy = ?rec.retention, "retention policy changed");
        }
        if let Some(conn) = forge {
            if rec.kind != MIRROR && !conn.kind.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "`{name}` is hosted here: only mirrors report to a forge"
                )));
            }
            rec.forge = self.forge_connection(name, &rec.url, &conn)?;
            tracing::info!(repo = name, forge = ?rec.forge.as_ref().map(|f| (&f.kind, &f.api_url, &f.project)), "forge connection changed");
            // Ids of the old connection (check runs, pipelines) mean nothing
            // to the new one; statuses waiting go to the new one.
            self.forget_forge_state(name, &mut extra, false)?;
        }
        let ws = self.save(name, &rec, extra)?;
        self.store.commit_durable(&ws).await?;
        Ok(rec)
    }

    /// Adds to `ws` the deletion of what the server keeps of `name`'s forge:
    /// the ids it gave back and how delivery went — and with `outbox`, the
    /// statuses still waiting.
    fn forget_forge_state(&self, name: &str, ws: &mut WriteSet, outbox: bool) -> Result<()> {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let trees: &[T] = if outbox { &[T::ForgeIds, T::StatusOutbox] } else { &[T::ForgeIds] };
        for tree in trees {
            for kv in self.store.tree(*tree).scan_prefix(&prefix) {
                ws.delete(*tree, kv?.0);
            }
        }
        if outbox {
            ws.delete(T::ForgeDelivery, name.as_bytes());
        }
        Ok(())
    }

    /// A forge connection checked and completed (`None`: none, when its
    /// kind is empty); its token secret must exist and be scoped to `name`.
    fn forge_connection(&self, name: &str, url: &str, conn: &ForgeConnection) -> Result<Option<ForgeConnection>> {
        if conn.kind.is_empty() {
            return Ok(None);
        }
        let conn = crate::forges::connection::complete(conn, url)?;
        let secret = crate::forges::connection::credential_secret(&conn);
        let scope = crate::secrets::SecretBox::scope(&self.store, secret)?;
        crate::forges::connection::check_token_scope(name, secret, scope.as_ref())?;
        if !conn.app_webhook_secret.is_empty() {
            let scope = crate::secrets::SecretBox::scope(&self.store, &conn.app_webhook_secret)?;
            crate::forges::connection::check_webhook_secret_scope(name, &conn.app_webhook_secret, scope.as_ref())?;
        }
        Ok(Some(conn))
    }

    /// A secret's value; a missing one is the caller's to set.
    pub(crate) fn secret(&self, name: &str) -> Result<String> {
        self.secrets.get(&self.store, name)?.map(|(value, _)| value).ok_or_else(|| {
            Error::FailedPrecondition(format!("secret `{name}` is not set (viaduct secrets set {name})"))
        })
    }

    /// What a mirror's fetches authenticate with (see `git::Credentials`).
    pub(crate) fn fetch_credentials(&self, rec: &RepoRecord) -> Result<Option<git::Credentials>> {
        if rec.credentials.is_empty() {
            return Ok(None);
        }
        Ok(Some(git::Credentials { secret: rec.credentials.clone(), value: self.secret(&rec.credentials)? }))
    }

    /// Deletes a repository, the refs acted on and the server's copy of it.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _guard = self.lock_for(name).lock_owned().await;
        self.get(name)?;
        let mut ws = WriteSet::default();
        ws.delete(T::Repos, name.as_bytes());
        for k in self.store.tree(T::RefState).scan_prefix(ref_key(name, "")).map(|kv| kv.map(|(k, _)| k)) {
            ws.delete(T::RefState, k?);
        }
        // A repository made later under this name starts with nothing of this one's.
        self.forget_forge_state(name, &mut ws, true)?;
        // Nor its environments (their rules and variables), services and
        // deployment history (the records stay, found through their runs);
        // refused while a deployment is unfinished.
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        for kv in self.store.tree(T::DeploymentIndex).scan_prefix(&prefix) {
            let (k, open) = kv?;
            if !open.is_empty() {
                let id = crate::engine::deployments::id_of_index_key(&k);
                return Err(Error::precondition(format!(
                    "deployment {id} of `{name}` is unfinished: let it end, or cancel its run, first"
                )));
            }
        }
        for t in [T::Environments, T::DeployedServices, T::ServiceHealth, T::DeploymentIndex] {
            for k in self.store.tree(t).scan_prefix(&prefix).map(|kv| kv.map(|(k, _)| k)) {
                ws.delete(t, k?);
            }
        }
        self.store.commit_durable(&ws).await?;
        let path = self.path(name);
        let _ = tokio::fs::remove_dir_all(&path).await;
        let _ = tokio::fs::remove_dir_all(self.data_dir.join("sources").join(name)).await;
        tracing::info!(repo = name, "repository deleted");
        Ok(())
    }

    /// Runs an archive of `commit` of `repo` (built and cached on first use).
    pub async fn archive(&self, repo: &str, commit: &str) -> Result<PathBuf> {
        let (path, cache, sha) = (self.path(repo), self.data_dir.join("sources").join(repo), commit.to_string());
        blocking(move || git::archive::cached(&path, &cache, &sha)).await
    }

    /// Rewrites the hook of a hosted repository (the server binary may have
    /// moved since it was written).
    pub async fn refresh_hook(&self, name: &str, rec: &RepoRecord) -> Result<()> {
        let (path, hook, n, b) = (self.path(name), self.hook.clone(), name.to_string(), rec.default_branch.clone());
        blocking(move || git::create_bare(&path, &n, &b, &hook)).await
    }
}

/// Checks a pull request policy: sender logins and associations are
/// short, printable words.
fn check_policy(p: &viaduct_proto::v1::PullRequestPolicy) -> Result<()> {
    for w in p.trusted_senders.iter().chain(&p.trusted_associations) {
        if w.is_empty() || w.len() > 100 || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(format!("`{}` is not a forge login or association", w.escape_debug())));
        }
    }
    Ok(())
}

fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}
