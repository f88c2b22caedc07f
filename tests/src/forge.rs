//! A forge as the tests need one: bare "upstream" repositories and working
//! copies driven by the real git CLI, repositories on the server (hosted or
//! mirrors), and webhooks signed and sent the way GitHub sends them
//! (`X-Hub-Signature-256`, the documented `pull_request` payload fields).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{Client, Server, http, output, v1};

/// Runs git in `dir` with a fixed identity; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = output(
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Ada Dev")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada Dev")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env("GIT_TERMINAL_PROMPT", "0"),
    );
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working copy with `.viaduct/pipeline.yml` and `hello.txt`, committed on
/// main.
pub fn work_tree(pipeline: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(dir.path().join(".viaduct")).unwrap();
    std::fs::write(dir.path().join(".viaduct/pipeline.yml"), pipeline).unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from git\n").unwrap();
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "add the pipeline"]);
    dir
}

/// A bare "forge" repository with the pipeline on main, and a working copy
/// of it: (its temp dir, the bare repository, the working copy).
pub fn upstream(pipeline: &str) -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("upstream.git");
    git(dir.path(), &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()]);
    let wt = work_tree(pipeline);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    (dir, bare, wt)
}

/// A hosted repository on the server.
pub async fn create_hosted(client: &Client, name: &str) -> v1::Repo {
    let req = v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Hosted(v1::HostedRepo::default())),
    };
    client.repos().create(req).await.unwrap().into_inner()
}

/// A mirror of `url` with webhook secret `secret`.
pub async fn create_mirror(client: &Client, name: &str, url: &str, secret: &str) -> v1::Repo {
    let req = v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Mirror(v1::MirrorRepo {
            url: url.into(),
            webhook_secret: secret.into(),
            ..Default::default()
        })),
    };
    client.repos().create(req).await.unwrap().into_inner()
}

/// Commits a change to `wt` and pushes it to `bare`, then syncs the
/// mirror `name` from it: the commit's sha and the one run it started.
pub async fn push_and_sync(client: &Client, wt: &Path, bare: &Path, name: &str) -> (String, String) {
    std::fs::write(wt.join("hello.txt"), format!("a change for {name}\n")).unwrap();
    git(wt, &["commit", "-qam", "a change"]);
    git(wt, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let sync = client
        .repos()
        .sync(v1::SyncRepoRequest { name: name.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sync.run_ids.len(), 1, "{sync:?}");
    (git(wt, &["rev-parse", "HEAD"]), sync.run_ids[0].clone())
}

/// The runs of a repository, newest first.
pub async fn runs_of(client: &Client, repo: &str) -> Vec<v1::Run> {
    let req = v1::ListRunsRequest { repo: repo.into(), ..Default::default() };
    client.runs().list(req).await.unwrap().into_inner().runs
}

/// GitHub's `X-Hub-Signature-256` of `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A pull request as GitHub describes it in its `pull_request` webhook.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// `number`.
    pub number: u32,
    /// `pull_request.head.sha`.
    pub head_sha: String,
    /// `pull_request.head.ref`.
    pub head_ref: String,
    /// `pull_request.head.repo.full_name`: a fork's, or the base's.
    pub head_repo: String,
    /// `pull_request.base.ref`.
    pub base_ref: String,
    /// `pull_request.base.repo.full_name`.
    pub base_repo: String,
    /// `pull_request.user.login`.
    pub author: String,
    /// `pull_request.author_association`.
    pub association: String,
}

impl PullRequest {
    /// The `pull_request` event body for `action` ("opened", "synchronize").
    pub fn body(&self, action: &str) -> String {
        serde_json::json!({
            "action": action,
            "number": self.number,
            "pull_request": {
                "number": self.number,
                "head": {"sha": self.head_sha, "ref": self.head_ref, "repo": {"full_name": self.head_repo}},
                "base": {"ref": self.base_ref, "repo": {"full_name": self.base_repo}},
                "user": {"login": self.author},
                "author_association": self.association,
            },
            "sender": {"login": self.author},
        })
        .to_string()
    }

    /// Delivers the event to mirror `repo` of `server`, signed with
    /// `secret`; returns the HTTP status and body.
    pub fn deliver(&self, server: &Server, repo: &str, secret: &str, delivery: &str) -> (u16, String) {
        let body = self.body("opened");
        let sig = sign(secret, body.as_bytes());
        let h = [("x-github-event", "pull_request"), ("x-github-delivery", delivery), ("x-hub-signature-256", &sig)];
        let (code, reply) = http(server.addr(), "POST", &format!("/webhooks/{repo}"), &h, body.as_bytes());
        (code, String::from_utf8_lossy(&reply).into_owned())
    }
}
