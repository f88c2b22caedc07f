//! Putting a job's code into its workspace.
//!
//! By default the runner asks the server (`RunnerAgent.FetchSource`): the
//! server streams the tree at the commit as a zstd-compressed tar, built
//! once per commit and cached, so a runner needs no credentials to the
//! forge. With `--clone-sources` the runner clones the repository itself
//! with git2 (from the upstream URL of a mirror, or the server's git HTTP
//! endpoint with its runner token for a hosted repository).

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use git2::{Cred, CredentialType, FetchOptions, Oid, RemoteCallbacks, Repository, build::CheckoutBuilder};
use tokio_stream::StreamExt;
use viaduct_proto::v1::{FetchSourceRequest, JobRef, SourcePlan};

/// Gets sources for jobs.
pub struct Sources {
    client: viaduct_sdk::Client,
    token: String,
    clone_directly: bool,
    tmp: PathBuf,
}

impl Sources {
    /// Fetches through `client` (runner token `token`), or clones when
    /// `clone_directly`; archives are staged in `tmp`.
    pub fn new(client: viaduct_sdk::Client, token: String, clone_directly: bool, tmp: PathBuf) -> Self {
        if clone_directly {
            // The runner clones into workspaces owned by a job's slot user:
            // libgit2's "owned by the current user" check (against other
            // users' repositories running code through their config) does
            // not apply to repositories the runner itself creates there.
            // SAFETY: set once, before any repository is opened.
            if let Err(e) = unsafe { git2::opts::set_verify_owner_validation(false) } {
                tracing::warn!(error = %e, "cannot turn off libgit2's owner check: clones into slot users' workspaces fail");
            }
        }
        Self { client, token, clone_directly, tmp }
    }

    /// Puts the code of `plan` into `dest` (an empty directory). Returns a
    /// one-line summary.
    pub async fn checkout(&self, job: &JobRef, plan: &SourcePlan, dest: &Path) -> Result<String, String> {
        let started = Instant::now();
        if self.clone_directly && !plan.clone_url.is_empty() {
            let (p, d, token) = (plan.clone(), dest.to_path_buf(), self.token.clone());
            tokio::task::spawn_blocking(move || clone(&p, &d, &token))
                .await
                .map_err(|e| format!("clone task failed: {e}"))??;
            return Ok(format!("cloned {} at {} in {:.0?}", plan.clone_url, short(&plan.commit), started.elapsed()));
        }
        tokio::fs::create_dir_all(&self.tmp).await.map_err(|e| format!("cannot create {}: {e}", self.tmp.display()))?;
        let archive = self.tmp.join(format!("{}-a{}.tar.zst", job.job_id, job.attempt));
        // A server that restarts (or a replica taking over) is unavailable
        // for a moment: the job waits for it rather than failing.
        let deadline = Instant::now() + SERVER_AWAY;
        let mut pause = std::time::Duration::from_millis(200);
        let size = loop {
            match self.download(job, &archive).await {
                Ok(size) => break size,
                // Unknown, Cancelled: the connection broke under the call (a
                // read: safe to do again; the runner itself cancels nothing).
                Err(Fetch::Status(s))
                    if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
                        && Instant::now() + pause < deadline =>
                {
                    tracing::info!(job = %job.job_id, error = %viaduct_sdk::status_line(&s), "the server is away: fetching the source again shortly");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&archive);
                    return Err(match e {
                        Fetch::Status(s) if s.code() == tonic::Code::Unavailable => {
                            format!(
                                "the server stayed away for {}s: {}",
                                SERVER_AWAY.as_secs(),
                                viaduct_sdk::status_line(&s)
                            )
                        }
                        Fetch::Status(s) => format!("the server refused the source: {}", viaduct_sdk::status_line(&s)),
                        Fetch::Local(e) => e,
                    });
                }
            }
        };
        let (a, d) = (archive.clone(), dest.to_path_buf());
        let files = tokio::task::spawn_blocking(move || unpack(&a, &d))
            .await
            .map_err(|e| format!("unpack task failed: {e}"))?;
        let _ = std::fs::remove_file(&archive);
        let files = files?;
        Ok(format!("{} files at {} ({size} bytes compressed) in {:.0?}", files, short(&plan.commit), started.elapsed()))
    }
}

/// How long a checkout waits for an unavailable server.
const SERVER_AWAY: std::time::Duration = std::time::Duration::from_secs(120);

/// Why a download failed: the server's answer, or here.
enum Fetch {
    Status(tonic::Status),
    Local(String),
}

impl Sources {
    /// Downloads the job's source archive into `archive`; its size.
    async fn download(&self, job: &JobRef, archive: &Path) -> Result<u64, Fetch> {
        let mut stream = self
            .client
            .agent()
            .fetch_source(FetchSourceRequest { job: Some(job.clone()) })
            .await
            .map_err(Fetch::Status)?
            .into_inner();
        let mut file = std::fs::File::create(archive)
            .map_err(|e| Fetch::Local(format!("cannot write {}: {e}", archive.display())))?;
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Fetch::Status)?;
            size += chunk.data.len() as u64;
            file.write_all(&chunk.data).map_err(|e| Fetch::Local(format!("cannot write the source archive: {e}")))?;
        }
        Ok(size)
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Unpacks a tar.zst into `dest`; returns the number of entries. The tar
/// crate refuses entries that would land outside `dest`.
fn unpack(archive: &Path, dest: &Path) -> Result<usize, String> {
    let file = std::fs::File::open(archive).map_err(|e| format!("cannot open the source archive: {e}"))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| format!("the source archive is not zstd: {e}"))?;
    let mut ar = tar::Archive::new(decoder);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    let mut n = 0;
    for entry in ar.entries().map_err(|e| format!("bad source archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("bad source archive: {e}"))?;
        entry.unpack_in(dest).map_err(|e| {
            format!("cannot unpack {}: {e}", entry.path().map(|p| p.display().to_string()).unwrap_or_default())
        })?;
        n += 1;
    }
    Ok(n)
}

/// Clones `plan.clone_url` into `dest` and checks out `plan.commit`.
fn clone(plan: &SourcePlan, dest: &Path, token: &str) -> Result<(), String> {
    let fail = |what: &str, e: git2::Error| format!("{what}: {}", e.message());
    let repo = Repository::init(dest).map_err(|e| fail("git init", e))?;
    let mut remote = repo.remote("origin", &plan.clone_url).map_err(|e| fail("bad clone URL", e))?;
    let mut cb = RemoteCallbacks::new();
    let token = token.to_string();
    cb.credentials(move |_, user, allowed| {
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            Cred::userpass_plaintext("runner", &token)
        } else if allowed.contains(CredentialType::SSH_KEY) {
            Cred::ssh_key_from_agent(user.unwrap_or("git"))
        } else {
            Cred::default()
        }
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(cb);
    let mut specs = vec![plan.commit.clone()];
    if !plan.r#ref.is_empty() {
        specs.insert(0, format!("+{0}:{0}", plan.r#ref));
    }
    // Fetch the ref (any server allows it), then the commit itself if the
    // ref has moved on since.
    remote.fetch(&specs[..1], Some(&mut opts), None).map_err(|e| fail("git fetch", e))?;
    let oid = Oid::from_str(&plan.commit).map_err(|e| fail("bad commit id", e))?;
    if repo.find_commit(oid).is_err() && specs.len() > 1 {
        remote.fetch(&specs[1..], Some(&mut opts), None).map_err(|e| fail("git fetch of the commit", e))?;
    }
    let commit = repo.find_commit(oid).map_err(|e| fail("commit not found after fetching", e))?;
    repo.checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force())).map_err(|e| fail("checkout", e))?;
    repo.set_head_detached(oid).map_err(|e| fail("detach HEAD", e))?;
    Ok(())
}
