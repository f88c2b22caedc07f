//! Git, through libgit2 (git2): the server's copies of repositories.
//!
//! Everything here is blocking; async callers go through
//! `tokio::task::spawn_blocking`. Hosted repositories and mirrors are both
//! bare repositories under `DATA_DIR/repos/`.

pub mod archive;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use git2::{
    AutotagOption, Cred, CredentialType, Direction, FetchOptions, FetchPrune, ObjectType, Oid, RemoteCallbacks,
    Repository, RepositoryInitOptions,
};

use crate::error::{Error, Result};

/// Where the pipeline file lives in a repository.
pub const PIPELINE_PATH: &str = ".viaduct/pipeline.yml";

impl From<git2::Error> for Error {
    fn from(e: git2::Error) -> Self {
        Error::Internal(format!("git: {}", e.message()))
    }
}

/// What the post-receive hook of a hosted repository runs.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The `viaduct-server` binary.
    pub exe: PathBuf,
    /// The server's data directory (where it finds the address and token).
    pub data_dir: PathBuf,
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Creates a bare repository at `path` whose HEAD is `default_branch`, with
/// a post-receive hook that tells the server to look at repository `name`.
pub fn create_bare(path: &Path, name: &str, default_branch: &str, hook: &Hook) -> Result<()> {
    let mut opts = RepositoryInitOptions::new();
    opts.bare(true).initial_head(default_branch).mkpath(true);
    let repo = Repository::init_opts(path, &opts)?;
    let mut cfg = repo.config()?;
    // Pushes over git smart HTTP (authenticated by the server).
    cfg.set_bool("http.receivepack", true)?;
    let script = format!(
        "#!/bin/sh\n# Installed by viaduct-server: tells the server which repository received a push.\n\
         # It compares the refs itself, so this hook needs nothing from stdin.\n\
         exec {} hook --data-dir {} --repo {} >&2\n",
        sh_quote(&hook.exe.display().to_string()),
        sh_quote(&hook.data_dir.display().to_string()),
        sh_quote(name),
    );
    let hook_path = path.join("hooks").join("post-receive");
    std::fs::write(&hook_path, script).map_err(|e| Error::Internal(format!("cannot write the hook: {e}")))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook_path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::Internal(format!("cannot make the hook executable: {e}")))?;
    Ok(())
}

/// Opens the bare repository at `path` (creating an empty one for a mirror
/// that was never fetched).
pub fn open_or_init(path: &Path) -> Result<Repository> {
    match Repository::open_bare(path) {
        Ok(r) => Ok(r),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(Repository::init_bare(path)?),
        Err(e) => Err(e.into()),
    }
}

/// What a mirror's fetches authenticate with: the value of a secret.
#[derive(Clone)]
pub struct Credentials {
    /// The secret's name (for messages; the value never appears in one).
    pub secret: String,
    /// An ssh private key (OpenSSH or PEM, no passphrase), or for http(s)
    /// `user:password` or a token alone (sent as the password).
    pub value: String,
}

impl Credentials {
    fn cred(&self, user: Option<&str>, allowed: CredentialType) -> std::result::Result<Cred, git2::Error> {
        let key = self.value.trim_start().starts_with("-----BEGIN");
        if key && allowed.contains(CredentialType::SSH_KEY) {
            return Cred::ssh_key_from_memory(user.unwrap_or("git"), None, &self.value, None);
        }
        if !key && allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            return match self.value.split_once(':') {
                Some((u, p)) => Cred::userpass_plaintext(u, p),
                None => Cred::userpass_plaintext(user.unwrap_or("git"), &self.value),
            };
        }
        let what = if key { "an ssh key, but the remote wants a password" } else { "not an ssh key" };
        Err(git2::Error::from_str(&format!("the credentials in secret `{}` do not fit: {what}", self.secret)))
    }
}

/// Remote callbacks that answer libgit2's credential requests once: with
/// `creds` when given, else the server user's ssh agent and keys or git's
/// credential helper. A second request means the first answer was refused
/// (libgit2 would otherwise ask forever).
fn callbacks(creds: Option<&Credentials>) -> RemoteCallbacks<'_> {
    let mut cb = RemoteCallbacks::new();
    let mut asked = false;
    cb.credentials(move |url, user, allowed| {
        if allowed == CredentialType::USERNAME {
            // ssh URLs without a user: libgit2 asks for one first.
            return Cred::username(user.unwrap_or("git"));
        }
        if std::mem::replace(&mut asked, true) {
            let whose = creds.map_or_else(|| "the server's".to_string(), |c| format!("secret `{}`'s", c.secret));
            return Err(git2::Error::from_str(&format!("authentication failed with {whose} credentials")));
        }
        if let Some(c) = creds {
            return c.cred(user, allowed);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = user.unwrap_or("git");
            // The agent first, then the default key of the server's user.
            return Cred::ssh_key_from_agent(user).or_else(|_| {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                Cred::ssh_key(user, None, &home.join(".ssh/id_ed25519"), None)
                    .or_else(|_| Cred::ssh_key(user, None, &home.join(".ssh/id_rsa"), None))
            });
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let cfg = git2::Config::open_default()?;
            return Cred::credential_helper(&cfg, url, user);
        }
        Cred::default()
    });
    cb
}

/// Fetches every branch and tag of `url` into the bare repository at
/// `path` (pruning what was deleted), plus any `extra` refspecs, with
/// `creds` if given. Returns the remote's default branch, if it says.
pub fn fetch(path: &Path, url: &str, extra: &[String], creds: Option<&Credentials>) -> Result<Option<String>> {
    let repo = open_or_init(path)?;
    let mut remote = repo.remote_anonymous(url)?;
    remote.connect_auth(Direction::Fetch, Some(callbacks(creds)), None)?;
    let default = remote
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().ok().and_then(|s| s.strip_prefix("refs/heads/")).map(String::from));
    remote.disconnect()?;
    let mut specs = vec!["+refs/heads/*:refs/heads/*".to_string(), "+refs/tags/*:refs/tags/*".to_string()];
    specs.extend(extra.iter().cloned());
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks(creds)).prune(FetchPrune::On).download_tags(AutotagOption::All);
    remote.fetch(&specs, Some(&mut opts), None)?;
    Ok(default)
}

/// Branch and tag tips: full ref name → commit id (tags peeled).
pub fn refs(path: &Path) -> Result<BTreeMap<String, String>> {
    let repo = Repository::open_bare(path)?;
    let mut out = BTreeMap::new();
    for r in repo.references()? {
        let r = r?;
        let Ok(name) = r.name() else { continue };
        if !(name.starts_with("refs/heads/") || name.starts_with("refs/tags/")) {
            continue;
        }
        if let Ok(commit) = r.peel_to_commit() {
            out.insert(name.to_string(), commit.id().to_string());
        }
    }
    Ok(out)
}

/// The commit a branch, tag, full ref or (abbreviated) commit id names.
pub fn resolve(path: &Path, what: &str) -> Result<String> {
    let repo = Repository::open_bare(path)?;
    for candidate in [what.to_string(), format!("refs/heads/{what}"), format!("refs/tags/{what}")] {
        if let Ok(obj) = repo.revparse_single(&candidate)
            && let Ok(c) = obj.peel_to_commit()
        {
            return Ok(c.id().to_string());
        }
    }
    Err(Error::not_found(format!("no branch, tag or commit `{what}` in the repository")))
}

/// A commit's metadata.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// "Name <email>".
    pub author: String,
    /// The first line of the message.
    pub summary: String,
}

/// Metadata of commit `sha`.
pub fn commit_info(path: &Path, sha: &str) -> Result<CommitInfo> {
    let repo = Repository::open_bare(path)?;
    let c = repo.find_commit(oid(sha)?)?;
    let a = c.author();
    Ok(CommitInfo {
        author: format!("{} <{}>", a.name().unwrap_or(""), a.email().unwrap_or("")),
        summary: c.summary().ok().flatten().unwrap_or("").to_string(),
    })
}

/// A file read from a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileText {
    /// Its text.
    Whole(String),
    /// Its size: over the limit, so not read (a repository cannot make the
    /// server load a huge blob into memory).
    TooLarge(u64),
}

/// The text of `file` at commit `sha` when at most `max` bytes (its size
/// is read from the object header first); `None` when the commit has no
/// such file.
pub fn read_file(path: &Path, sha: &str, file: &str, max: usize) -> Result<Option<FileText>> {
    let repo = Repository::open_bare(path)?;
    let tree = repo.find_commit(oid(sha)?)?.tree()?;
    let entry = match tree.get_path(Path::new(file)) {
        Ok(e) => e,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if entry.kind() != Some(ObjectType::Blob) {
        return Ok(None);
    }
    let (size, _) = repo.odb()?.read_header(entry.id())?;
    if size > max {
        return Ok(Some(FileText::TooLarge(size as u64)));
    }
    let blob = repo.find_blob(entry.id())?;
    String::from_utf8(blob.content().to_vec())
        .map(|text| Some(FileText::Whole(text)))
        .map_err(|_| Error::invalid(format!("{file} at {sha} is not UTF-8 text")))
}

fn oid(sha: &str) -> Result<Oid> {
    Oid::from_str(sha).map_err(|_| Error::invalid(format!("`{sha}` is not a commit id")))
}
