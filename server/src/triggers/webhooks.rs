//! Forge webhooks on `POST /webhooks/<repo>` for mirrors.
//!
//! | forge | event header | signature | delivery id |
//! |---|---|---|---|
//! | GitHub | `X-GitHub-Event` | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` | `X-GitHub-Delivery` |
//! | GitLab | `X-Gitlab-Event` | `X-Gitlab-Token: <secret>` | `X-Gitlab-Event-UUID` |
//! | Gitea | `X-Gitea-Event` | `X-Gitea-Signature: <hex HMAC-SHA256>` | `X-Gitea-Delivery` |
//! | Forgejo | `X-Forgejo-Event` | `X-Forgejo-Signature: <hex HMAC-SHA256>` | `X-Forgejo-Delivery` |
//!
//! Signatures are checked in constant time with the repository's webhook
//! secret; a bad one gets 401 and a warning in the log — as does a request
//! for a repository that does not exist or takes no webhooks, so nobody
//! learns which repositories exist without the secret. A delivery id seen
//! before gets 200 and starts nothing. Push events fetch the mirror and
//! sync it (so a push is acted on once, whether the webhook or the poller
//! sees it first); pull-request events fetch the request's head and start
//! a `pull_request` run.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{PullRequest, Rerun, Triggers};
use crate::repos::MIRROR;
use crate::store::{T, WriteSet, now_ms};

/// How long delivery ids are remembered (replays older than this would be
/// caught by the ref comparison anyway).
pub const DELIVERY_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forge {
    GitHub,
    GitLab,
    Gitea,
    Forgejo,
}

impl Forge {
    fn detect(h: &HeaderMap) -> Option<Self> {
        // Forgejo also sends Gitea's headers, and Gitea GitHub's: most
        // specific first.
        [
            ("x-gitlab-event", Forge::GitLab),
            ("x-forgejo-event", Forge::Forgejo),
            ("x-gitea-event", Forge::Gitea),
            ("x-github-event", Forge::GitHub),
        ]
        .into_iter()
        .find(|(name, _)| h.contains_key(*name))
        .map(|(_, f)| f)
    }

    fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
        }
    }

    fn header(self, what: &str) -> String {
        let prefix = match self {
            Forge::GitHub => "x-github",
            Forge::GitLab => "x-gitlab",
            Forge::Gitea => "x-gitea",
            Forge::Forgejo => "x-forgejo",
        };
        format!("{prefix}-{what}")
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Checks the request's signature (or token) against `secret`.
fn verified(forge: Forge, h: &HeaderMap, body: &[u8], secret: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let hmac_ok = |hex_sig: Option<&str>| {
        let Some(sig) = hex_sig.and_then(|s| hex::decode(s).ok()) else { return false };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
        mac.update(body);
        // Constant time.
        mac.verify_slice(&sig).is_ok()
    };
    match forge {
        Forge::GitHub => hmac_ok(header(h, "x-hub-signature-256").and_then(|s| s.strip_prefix("sha256="))),
        Forge::Gitea | Forge::Forgejo => hmac_ok(header(h, &forge.header("signature"))),
        Forge::GitLab => header(h, "x-gitlab-token").is_some_and(|t| bool::from(t.as_bytes().ct_eq(secret.as_bytes()))),
    }
}

fn delivery_id(forge: Forge, h: &HeaderMap) -> Option<String> {
    let id = match forge {
        Forge::GitLab => header(h, "x-gitlab-event-uuid").or_else(|| header(h, "idempotency-key")),
        _ => header(h, &forge.header("delivery")),
    }?;
    Some(format!("{}:{id}", forge.name()))
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, Json(body)).into_response()
}

/// What a webhook asks for.
enum Ask {
    Sync,
    PullRequest(PullRequest),
    /// "Re-run" on a check run (GitHub's `check_run` `rerequested`).
    Rerun(Rerun),
    Ignore(String),
}

fn classify(forge: Forge, event: &str, body: &Value) -> Ask {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match (forge, event) {
        (Forge::GitLab, "Push Hook" | "Tag Push Hook") | (_, "push") => Ask::Sync,
        (Forge::GitLab, "Merge Request Hook") => {
            let a = &body["object_attributes"];
            // `update` also when only the target branch changed.
            if !matches!(a["action"].as_str(), Some("open" | "update" | "reopen")) {
                return Ask::Ignore(format!("merge request action {}", a["action"]));
            }
            let number = a["iid"].as_u64().unwrap_or(0) as u32;
            // A merge request from another project (a fork) — or one
            // whose source project is not named — is a fork.
            let (source, target) = (a["source_project_id"].as_u64(), a["target_project_id"].as_u64());
            Ask::PullRequest(PullRequest {
                number,
                head_sha: s(&a["last_commit"]["id"]),
                head_branch: s(&a["source_branch"]),
                base_branch: s(&a["target_branch"]),
                remote_ref: format!("refs/merge-requests/{number}/head"),
                head_repo: s(&a["source"]["path_with_namespace"]),
                fork: source.is_none() || source != target,
                sender: s(&body["user"]["username"]),
                // GitLab says nothing of the sender's role in its hook.
                sender_association: String::new(),
            })
        }
        (_, "pull_request") => {
            // `edited` matters when the base branch changed: the run (or the
            // checks reported as not run) of the old base says nothing of the new.
            let retargeted = body["action"].as_str() == Some("edited") && !body["changes"]["base"].is_null();
            if !retargeted
                && !matches!(body["action"].as_str(), Some("opened" | "synchronize" | "synchronized" | "reopened"))
            {
                return Ask::Ignore(format!("pull request action {}", body["action"]));
            }
            let pr = &body["pull_request"];
            let number = body["number"].as_u64().or_else(|| pr["number"].as_u64()).unwrap_or(0) as u32;
            // The head's repository is null once a fork is deleted: a head
            // whose repository is not the base's, or unknown, is a fork.
            let (head_repo, base_repo) = (s(&pr["head"]["repo"]["full_name"]), s(&pr["base"]["repo"]["full_name"]));
            Ask::PullRequest(PullRequest {
                number,
                head_sha: s(&pr["head"]["sha"]),
                head_branch: s(&pr["head"]["ref"]),
                base_branch: s(&pr["base"]["ref"]),
                remote_ref: format!("refs/pull/{number}/head"),
                fork: head_repo.is_empty() || !head_repo.eq_ignore_ascii_case(&base_repo),
                head_repo,
                // Its author (whose code it is), not who sent this event.
                sender: s(&pr["user"]["login"]),
                sender_association: match forge {
                    Forge::GitHub => s(&pr["author_association"]),
                    _ => String::new(),
                },
            })
        }
        (Forge::GitHub, "check_run") => {
            if body["action"].as_str() != Some("rerequested") {
                return Ask::Ignore(format!("check run action {}", body["action"]));
            }
            let c = &body["check_run"];
            Ask::Rerun(Rerun {
                app_id: c["app"]["id"].as_u64().map(|id| id.to_string()).unwrap_or_default(),
                external_id: s(&c["external_id"]),
                head_sha: s(&c["head_sha"]),
                sender: s(&body["sender"]["login"]),
            })
        }
        (_, other) => Ask::Ignore(format!("event {other}")),
    }
}

/// `POST /webhooks/{repo}`.
pub async fn handle(State(t): State<Arc<Triggers>>, Path(repo): Path<String>, h: HeaderMap, body: Bytes) -> Response {
    let Some(forge) = Forge::detect(&h) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "unknown sender: expected GitHub, GitLab, Gitea or Forgejo webhook headers"}),
        );
    };
    // A missing repository, one that takes no webhooks and a bad signature
    // get the same answer: only the forge holding the secret learns more
    // (and the server's log says which it was).
    let refuse = |why: &str| {
        tracing::warn!(repo, forge = forge.name(), why, "webhook refused: bad or missing signature");
        reply(StatusCode::UNAUTHORIZED, json!({"error": "bad or missing webhook signature"}))
    };
    let rec = match t.repos.get(&repo) {
        Ok(r) if r.kind == MIRROR => r,
        Ok(_) => return refuse("not a mirror (hosted repositories take no webhooks)"),
        Err(_) => return refuse("no such repository"),
    };
    if !verified(forge, &h, &body, &rec.webhook_secret) {
        return refuse("the signature does not match the repository's secret");
    }
    let event = header(&h, &forge.header("event")).unwrap_or_default().to_string();
    // No room for new runs: 503 before the delivery is recorded, so the
    // forge's redelivery is not taken for a duplicate.
    if let Err(e) = t.engine().check_room() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e.to_string()}));
    }
    let delivery = delivery_id(forge, &h);
    if let Some(answer) = first_delivery(&t, &repo, delivery.as_deref()).await {
        return answer;
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": format!("the body is not JSON: {e}")})),
    };
    tracing::info!(repo, forge = forge.name(), event, "webhook received");
    match classify(forge, &event, &payload) {
        Ask::Sync => match t.sync(&repo).await {
            Ok(o) => reply(
                StatusCode::OK,
                json!({"status": "ok", "runs": o.runs.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            ),
            Err(e) => failed(&t, delivery.as_deref(), e).await,
        },
        Ask::PullRequest(pr) if pr.head_sha.is_empty() || pr.number == 0 => {
            reply(StatusCode::BAD_REQUEST, json!({"error": "pull request without a number or head commit"}))
        }
        Ask::PullRequest(pr) => match t.pull_request(&repo, pr).await {
            Ok(run) => reply(
                StatusCode::OK,
                json!({"status": "ok", "runs": run.map(|r| vec![r.to_string()]).unwrap_or_default()}),
            ),
            Err(e) => failed(&t, delivery.as_deref(), e).await,
        },
        // GitHub sends a check run's re-run to the app's own webhook only.
        Ask::Rerun(_) => reply(
            StatusCode::OK,
            json!({"status": "ignored", "reason": "check runs are re-run through the app's webhook (/webhooks/github-app/<id>)"}),
        ),
        Ask::Ignore(what) => reply(StatusCode::OK, json!({"status": "ignored", "reason": what})),
    }
}

/// Records a delivery id; `Some(reply)` when it was seen before (or cannot
/// be recorded). Recorded before acting: if the server dies right after,
/// the ref comparison of the next sync still starts the run.
async fn first_delivery(t: &Triggers, repo: &str, delivery: Option<&str>) -> Option<Response> {
    let id = delivery?;
    let store = &t.store;
    match store.tree(T::Deliveries).get(id.as_bytes()) {
        Ok(Some(_)) => {
            tracing::info!(repo, delivery = %id, "webhook delivery seen before: ignored");
            return Some(reply(StatusCode::OK, json!({"status": "duplicate", "delivery": id})));
        }
        Ok(None) => {}
        Err(e) => return Some(reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e.to_string()}))),
    }
    let mut ws = WriteSet::default();
    ws.put_raw(T::Deliveries, id.as_bytes(), now_ms().to_be_bytes().to_vec());
    match store.commit_durable(&ws).await {
        Ok(()) => None,
        Err(e) => Some(reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e.to_string()}))),
    }
}

/// `POST /webhooks/github-app/{app_id}`: a GitHub App's own webhook, where
/// GitHub sends the events of the check runs the app made ("Re-run" is
/// `check_run` `rerequested`, "Re-run all checks" `check_suite`
/// `rerequested`; a repository's webhook never hears them). The repository
/// is the payload's `repository.full_name`: the mirror whose connection is
/// this app's on that project, and whose `app_webhook_secret` signs the
/// body. Anything else — no such mirror, no secret, a bad signature — gets
/// the same 401.
pub async fn handle_app(
    State(t): State<Arc<Triggers>>,
    Path(app_id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = |why: &str| {
        tracing::warn!(app = %app_id, why, "GitHub App webhook refused: bad or missing signature");
        reply(StatusCode::UNAUTHORIZED, json!({"error": "bad or missing webhook signature"}))
    };
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return refuse("the body is not JSON"),
    };
    let project = payload["repository"]["full_name"].as_str().unwrap_or_default();
    let Ok(repos) = t.repos.list() else { return refuse("cannot list repositories") };
    let found = repos.into_iter().find_map(|(name, rec)| {
        let f = rec.forge?;
        (f.app_id == app_id && !f.app_webhook_secret.is_empty() && f.project.eq_ignore_ascii_case(project))
            .then_some((name, f.app_webhook_secret))
    });
    let Some((repo, secret_name)) = found else {
        return refuse("no mirror of that project reports as this app with a webhook secret");
    };
    let Ok(secret) = t.repos.secret(&secret_name) else { return refuse("the app's webhook secret is not set") };
    if !verified(Forge::GitHub, &h, &body, &secret) {
        return refuse("the signature does not match the app's webhook secret");
    }
    // GitHub always names its deliveries: one without an id could be
    // replayed at will.
    let Some(delivery) = delivery_id(Forge::GitHub, &h) else {
        return reply(StatusCode::BAD_REQUEST, json!({"error": "no X-GitHub-Delivery"}));
    };
    if let Some(answer) = first_delivery(&t, &repo, Some(&delivery)).await {
        return answer;
    }
    let event = header(&h, "x-github-event").unwrap_or_default();
    let action = payload["action"].as_str().unwrap_or_default();
    let retried = match (event, action) {
        ("check_run", "rerequested") => match classify(Forge::GitHub, event, &payload) {
            Ask::Rerun(rerun) => t.rerun(&repo, &rerun).await.map(|id| vec![id]),
            _ => Ok(Vec::new()),
        },
        ("check_suite", "rerequested") => {
            let sha = payload["check_suite"]["head_sha"].as_str().unwrap_or_default();
            t.rerun_suite(&repo, &app_id, sha).await
        }
        _ => return reply(StatusCode::OK, json!({"status": "ignored", "reason": format!("event {event} {action}")})),
    };
    match retried {
        Ok(ids) => reply(
            StatusCode::OK,
            json!({"status": "ok", "retried": ids.iter().map(ToString::to_string).collect::<Vec<_>>()}),
        ),
        Err(
            e @ (crate::error::Error::NotFound(_)
            | crate::error::Error::Invalid(_)
            | crate::error::Error::FailedPrecondition(_)),
        ) => {
            tracing::info!(repo, error = %e, "re-run ignored");
            reply(StatusCode::OK, json!({"status": "ignored", "reason": e.to_string()}))
        }
        Err(e) => failed(&t, Some(&delivery), e).await,
    }
}

/// The reply to a delivery the server could not act on. Refused for want
/// of room: 503, and the delivery is forgotten so that the forge's
/// redelivery is acted on.
async fn failed(t: &Triggers, delivery: Option<&str>, e: crate::error::Error) -> Response {
    // Forgotten, so that the forge's redelivery is acted on.
    if let Some(id) = delivery {
        let mut ws = WriteSet::default();
        ws.delete(T::Deliveries, id.as_bytes());
        let _ = t.store.commit_durable(&ws).await;
    }
    if matches!(e, crate::error::Error::NoRoom(_)) {
        return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e.to_string()}));
    }
    reply(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()}))
}

/// Forgets deliveries older than [`DELIVERY_RETENTION_MS`].
pub fn prune_deliveries(t: &Triggers) {
    let store = &t.store;
    let cutoff = now_ms() - DELIVERY_RETENTION_MS;
    let mut ws = WriteSet::default();
    for kv in store.tree(T::Deliveries).iter().flatten() {
        let at = i64::from_be_bytes(kv.1.as_slice().try_into().unwrap_or([0; 8]));
        if at < cutoff {
            ws.delete(T::Deliveries, kv.0);
        }
    }
    if let Err(e) = store.commit(&ws) {
        tracing::warn!(error = %e, "cannot prune webhook deliveries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_of_each_forge() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut h = HeaderMap::new();
        h.insert("x-github-event", "push".parse().unwrap());
        h.insert("x-hub-signature-256", format!("sha256={}", sign("s3cret", body)).parse().unwrap());
        assert_eq!(Forge::detect(&h), Some(Forge::GitHub));
        assert!(verified(Forge::GitHub, &h, body, "s3cret"));
        assert!(!verified(Forge::GitHub, &h, body, "other"));
        assert!(!verified(Forge::GitHub, &h, b"tampered", "s3cret"));

        let mut h = HeaderMap::new();
        h.insert("x-gitea-event", "push".parse().unwrap());
        h.insert("x-forgejo-event", "push".parse().unwrap());
        h.insert("x-forgejo-signature", sign("k", body).parse().unwrap());
        assert_eq!(Forge::detect(&h), Some(Forge::Forgejo));
        assert!(verified(Forge::Forgejo, &h, body, "k"));

        let mut h = HeaderMap::new();
        h.insert("x-gitlab-event", "Push Hook".parse().unwrap());
        h.insert("x-gitlab-token", "tok".parse().unwrap());
        assert!(verified(Forge::GitLab, &h, body, "tok"));
        assert!(!verified(Forge::GitLab, &h, body, "tok2"));
        assert!(!verified(Forge::GitLab, &h, body, ""));
    }

    #[test]
    fn pull_requests_are_read_from_each_payload() {
        let gh = json!({"action": "synchronize", "number": 7, "pull_request": {
            "head": {"sha": "abc", "ref": "feat", "repo": {"full_name": "mallory/app"}},
            "base": {"ref": "main", "repo": {"full_name": "org/app"}},
            "user": {"login": "mallory"}, "author_association": "FIRST_TIME_CONTRIBUTOR"}});
        let Ask::PullRequest(pr) = classify(Forge::GitHub, "pull_request", &gh) else { panic!() };
        assert_eq!(
            (pr.number, pr.head_sha.as_str(), pr.base_branch.as_str(), pr.remote_ref.as_str()),
            (7, "abc", "main", "refs/pull/7/head")
        );
        assert_eq!(
            (pr.fork, pr.head_repo.as_str(), pr.sender.as_str(), pr.sender_association.as_str()),
            (true, "mallory/app", "mallory", "FIRST_TIME_CONTRIBUTOR")
        );
        let same = json!({"action": "opened", "number": 8, "pull_request": {
            "head": {"sha": "abc", "ref": "feat", "repo": {"full_name": "Org/App"}},
            "base": {"ref": "main", "repo": {"full_name": "org/app"}}, "user": {"login": "alice"}}});
        let Ask::PullRequest(pr) = classify(Forge::GitHub, "pull_request", &same) else { panic!() };
        assert!(!pr.fork);
        let deleted = json!({"action": "opened", "number": 9, "pull_request": {
            "head": {"sha": "abc", "ref": "feat", "repo": null}, "base": {"ref": "main", "repo": {"full_name": "org/app"}}}});
        let Ask::PullRequest(pr) = classify(Forge::GitHub, "pull_request", &deleted) else { panic!() };
        assert!(pr.fork, "a head without a repository is a fork");
        let gl = json!({"user": {"username": "eve"}, "object_attributes": {"iid": 3, "action": "open", "source_branch": "f",
            "target_branch": "main", "last_commit": {"id": "def"}, "source_project_id": 2, "target_project_id": 1}});
        let Ask::PullRequest(pr) = classify(Forge::GitLab, "Merge Request Hook", &gl) else { panic!() };
        assert_eq!(pr.remote_ref, "refs/merge-requests/3/head");
        assert!(pr.fork && pr.sender == "eve");
        assert!(matches!(classify(Forge::GitHub, "pull_request", &json!({"action": "closed"})), Ask::Ignore(_)));
        assert!(matches!(classify(Forge::GitHub, "ping", &json!({})), Ask::Ignore(_)));
    }
}
