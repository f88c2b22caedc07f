//! git over HTTP ("smart HTTP") at `/git/<repo>.git/…`, so a team can
//! `git push http://x:TOKEN@server/git/app.git` to a hosted repository.
//!
//! libgit2 has no server side, so requests go to `git http-backend`, git's
//! own CGI program, with the request body streamed to it and its output
//! streamed back. The post-receive hook it runs tells the server to sync.
//!
//! Authentication (through the gate, with its failed-authentication
//! limit): HTTP Basic with the token as the password (any user name), or
//! `Authorization: Bearer`. Fetching needs the `read` role on the
//! repository, pushing `push` (each push is in the audit log); runner
//! tokens may only fetch, and only a repository of a job they hold
//! (runners that clone for themselves). Only the smart protocol's three
//! paths are served, and the repository is the URL's whole first segment.

use std::{process::Stdio, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use super::Repos;
use crate::{
    auth::Principal,
    engine::Engine,
    error::Error,
    gate::{self, Gate},
};
use viaduct_proto::v1::Role;

/// State of the git HTTP routes.
#[derive(Clone)]
pub struct GitHttp {
    /// Repositories.
    pub repos: Arc<Repos>,
    /// Which runner holds which job.
    pub engine: Arc<Engine>,
    /// Authentication, limits and the audit log.
    pub gate: Arc<Gate>,
}

/// The git services served: the smart protocol only (no "dumb" file
/// access under the repository).
const SERVICES: &[&str] = &["/info/refs", "/git-upload-pack", "/git-receive-pack"];

/// `/git/<repo>.git/<service>` → (repo, `/<service>`), matched exactly: the
/// repository is the whole first segment, so `/git/a.github.git/…` is
/// repository `a.github`, never `a`.
fn route(path: &str) -> Option<(&str, &str)> {
    let path = path.strip_prefix("/git/")?;
    let first = path.split('/').next()?;
    let repo = first.strip_suffix(".git")?;
    let rest = &path[first.len()..];
    (!repo.is_empty() && SERVICES.contains(&rest)).then_some((repo, rest))
}

/// `/git/{*path}`. Authentication comes first, so whether a repository
/// exists is told only to whom may read it.
pub async fn handle(State(g): State<GitHttp>, req: Request) -> Response {
    let uri_path = req.uri().path().to_string();
    let Some((repo, rest)) = route(&uri_path) else {
        return (StatusCode::NOT_FOUND, "expected /git/<repository>.git/info/refs (git's smart HTTP)\n")
            .into_response();
    };
    let (repo, rest) = (repo.to_string(), rest.to_string());
    let query = req.uri().query().unwrap_or_default().to_string();
    let push = rest == "/git-receive-pack" || query.contains("service=git-receive-pack");
    let principal = match g.gate.authenticate(req.headers(), gate::peer_ip(&req)) {
        Ok(p) => p,
        Err(e) => return gate::http_refusal(&e),
    };
    let runner = match &principal {
        Principal::Runner(_) if push => {
            return gate::http_refusal(&Error::PermissionDenied("runner tokens cannot push".into()));
        }
        Principal::Runner(id) => Some(id.clone()),
        Principal::Person(c) => {
            let role = if push { Role::Push } else { Role::Read };
            if !c.grants.allows(role, Some(&repo)) {
                let what = if push { "push to" } else { "read" };
                let e = Error::PermissionDenied(format!(
                    "{} may not {what} repository `{repo}` (it needs the {} role there)",
                    c.actor,
                    crate::access::role_name(role)
                ));
                return gate::http_refusal(&e);
            }
            None
        }
    };
    let not_found = || (StatusCode::NOT_FOUND, format!("no repository `{repo}`\n")).into_response();
    if g.repos.get(&repo).is_err() {
        return not_found();
    }
    // A runner reads only the repository of a job it holds.
    if let Some(id) = runner {
        match g.engine.runner_holds_repo(&id, &repo) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(runner = %id, repo, "runner token refused: it holds no job of this repository");
                return (StatusCode::FORBIDDEN, format!("runner {id} holds no job of repository `{repo}`\n"))
                    .into_response();
            }
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        }
    }
    // A push brings new objects: refused while the disk is nearly full.
    if push && let Err(e) = g.engine.check_room() {
        return gate::http_refusal(&e);
    }
    let peer = gate::peer_of(&req).map(|a| a.to_string()).unwrap_or_default();
    let pusher = match &principal {
        crate::auth::Principal::Person(c) => c.actor.clone(),
        _ => String::new(),
    };
    let resp = match cgi(&g.repos, &repo, (&rest, &query, &pusher), req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(repo, error = %e, "git http-backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    };
    // The push itself (not the ref advertisement before it).
    if rest == "/git-receive-pack" {
        let outcome = if resp.status().is_success() { "ok".to_string() } else { resp.status().to_string() };
        g.gate.write_route(&principal, "git push", &format!("repository `{repo}`"), &peer, &outcome);
    }
    resp
}

/// Runs `git http-backend` for one request.
/// `pusher` reaches the repository's hook (`VIADUCT_PUSHER`), which names
/// them to the server.
async fn cgi(
    t: &Repos,
    repo: &str,
    (rest, query, pusher): (&str, &str, &str),
    req: Request,
) -> std::io::Result<Response> {
    let (content_type, content_encoding, content_length, git_protocol) = {
        let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        (h("content-type"), h("content-encoding"), h("content-length"), h("git-protocol"))
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("GIT_PROJECT_ROOT", t.repos_dir())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{repo}.git{rest}"))
        .env("REQUEST_METHOD", req.method().as_str())
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", content_type)
        .env("REMOTE_USER", "viaduct")
        .env("VIADUCT_PUSHER", pusher)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GIT_PROTOCOL", git_protocol)
        .env("HTTP_CONTENT_ENCODING", content_encoding)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !content_length.is_empty() {
        cmd.env("CONTENT_LENGTH", content_length);
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr"))?;
    let body = req.into_body().into_data_stream().map_err(std::io::Error::other);
    tokio::spawn(async move {
        let mut reader = StreamReader::new(body);
        let _ = tokio::io::copy(&mut reader, &mut stdin).await;
        let _ = stdin.shutdown().await;
    });
    let repo_name = repo.to_string();
    tokio::spawn(async move {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        if !err.trim().is_empty() {
            tracing::debug!(repo = repo_name, stderr = %err.trim(), "git http-backend");
        }
        let _ = child.wait().await;
    });
    // CGI: headers, a blank line, then the body.
    let mut out = BufReader::new(stdout);
    let mut builder = Response::builder().status(StatusCode::OK);
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).await? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(500);
            builder = builder.status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        } else {
            builder = builder.header(name, value);
        }
    }
    builder.body(Body::from_stream(ReaderStream::new(out))).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes_match_the_whole_repository_segment() {
        assert_eq!(route("/git/app.git/info/refs"), Some(("app", "/info/refs")));
        assert_eq!(route("/git/a.github.git/git-upload-pack"), Some(("a.github", "/git-upload-pack")));
        assert_eq!(route("/git/a.git/hub.git/info/refs"), None);
        assert_eq!(route("/git/app.git/objects/info/packs"), None, "no dumb protocol");
        assert_eq!(route("/git/app.git/HEAD"), None);
        assert_eq!(route("/git/app/info/refs"), None);
        assert_eq!(route("/git/.git/info/refs"), None);
    }
}
