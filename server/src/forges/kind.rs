//! Each forge's commit status API: where a status goes, how it
//! authenticates, and which of its words says a run's or job's state.
//!
//! | forge | request | auth | states |
//! |---|---|---|---|
//! | GitHub | `POST {api}/repos/{owner}/{repo}/statuses/{sha}` | `Authorization: Bearer` | error, failure, pending, success |
//! | GitLab | `POST {api}/projects/{id or path}/statuses/{sha}` | `PRIVATE-TOKEN` | pending, running, success, failed, canceled |
//! | Gitea, Forgejo | `POST {api}/repos/{owner}/{repo}/statuses/{sha}` | `Authorization: token` | pending, success, error, failure, warning |
//!
//! A job skipped because its own `if:` was false is a success everywhere
//! (its description says it was skipped, and why): a required check must
//! never wait for a job that will not run. One skipped because a job it
//! needs failed arrives here as a failure (`engine::commit_status`).
//!
//! And each forge's deployments API, told of Viaduct's deployments:
//!
//! | forge | create | later states | states (waiting, queued, in progress, success, failure, cancelled, refused) |
//! |---|---|---|---|
//! | GitHub | `POST {api}/repos/{owner}/{repo}/deployments` | `POST …/deployments/{id}/statuses` (the first one too) | queued, queued, in_progress, success, failure, error, error |
//! | GitLab | `POST {api}/projects/{id or path}/deployments` (with its state) | `PUT …/deployments/{id}` | —, —, running, success, failed, canceled, canceled |
//! | Gitea, Forgejo | — (no deployments API) | — | — |
//!
//! GitLab creates a deployment only running or ended (its API takes no
//! other word), so a deployment appears there once it starts.

use serde_json::{Value, json};
use viaduct_proto::v1::{DeploymentState, Status};

/// A forge whose API the server reports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GitHub and GitHub Enterprise Server.
    GitHub,
    /// GitLab.
    GitLab,
    /// Gitea and Forgejo.
    Gitea,
}

/// GitHub's API.
pub const GITHUB_API: &str = "https://api.github.com";

/// What the server sends as `User-Agent` (GitHub refuses requests without one).
pub const USER_AGENT: &str = concat!("viaduct/", env!("CARGO_PKG_VERSION"));

/// One status as sent.
pub struct Outgoing<'a> {
    /// The forge's name of the repository.
    pub project: &'a str,
    /// The commit.
    pub sha: &'a str,
    /// The ref the run was for.
    pub git_ref: &'a str,
    /// `viaduct/<pipeline>[/<job>]`.
    pub context: &'a str,
    /// The run's or job's state.
    pub status: Status,
    /// At most 140 characters.
    pub description: &'a str,
    /// The web UI's page of the run or job.
    pub target_url: &'a str,
    /// GitLab: the pipeline the run's statuses are grouped in, once known.
    pub pipeline_id: Option<u64>,
}

/// One state of a deployment as sent.
pub struct OutgoingDeployment<'a> {
    /// Viaduct's id of the deployment.
    pub id: u64,
    /// Its run.
    pub run_id: &'a str,
    /// The run's pipeline.
    pub pipeline: &'a str,
    /// The deploying job's name.
    pub job: &'a str,
    /// The commit deployed.
    pub sha: &'a str,
    /// The ref the run was for (`refs/heads/…`, `refs/tags/…`, or another).
    pub git_ref: &'a str,
    /// The environment.
    pub environment: &'a str,
    /// Its state.
    pub state: DeploymentState,
    /// At most 140 characters.
    pub description: &'a str,
    /// The web UI's page of the deploying job.
    pub log_url: &'a str,
    /// Where the environment can be seen ("" when unknown).
    pub environment_url: &'a str,
}

/// Where a deployment's state stands: 1 waiting, 2 queued, 3 in progress,
/// 4 ended (0: none). Each is sent once: one at or below the last sent is
/// not sent again (after a crash lost the outbox's deletion).
pub fn deployment_rank(state: DeploymentState) -> u8 {
    match state {
        DeploymentState::Unspecified => 0,
        DeploymentState::Waiting => 1,
        DeploymentState::Queued => 2,
        DeploymentState::InProgress => 3,
        DeploymentState::Success | DeploymentState::Failure | DeploymentState::Cancelled | DeploymentState::Refused => {
            4
        }
    }
}

/// GitLab's `:id` of a project: its id, or its URL-encoded path.
fn gitlab_project(project: &str) -> String {
    url::form_urlencoded::byte_serialize(project.as_bytes()).collect()
}

/// At most `max` characters.
fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Kind {
    /// The kind a word names.
    pub fn parse(word: &str) -> Option<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "github" => Some(Self::GitHub),
            "gitlab" => Some(Self::GitLab),
            "gitea" | "forgejo" => Some(Self::Gitea),
            _ => None,
        }
    }

    /// Its word.
    pub fn word(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::GitLab => "gitlab",
            Self::Gitea => "gitea",
        }
    }

    /// The API's path below its base URL for a host (`https://HOST`) when
    /// none is given: GitHub's is its own host.
    pub fn api_path(self) -> &'static str {
        match self {
            Self::GitHub => "/api/v3",
            Self::GitLab => "/api/v4",
            Self::Gitea => "/api/v1",
        }
    }

    /// Statuses of one run must be sent one after the other: GitLab groups
    /// them in the pipeline its first one created.
    pub fn one_at_a_time(self) -> bool {
        self == Self::GitLab
    }

    /// The forge's word for `status`.
    pub fn state(self, status: Status) -> &'static str {
        use Status as S;
        match (self, status) {
            (Self::GitLab, S::Running) => "running",
            (_, S::Unspecified | S::Pending | S::Queued | S::Running) => "pending",
            (_, S::Success | S::Skipped) => "success",
            (Self::GitLab, S::Failure | S::TimedOut | S::RunnerLost) => "failed",
            (Self::GitLab, S::Cancelled) => "canceled",
            (_, S::Failure | S::TimedOut) => "failure",
            // Not the code's fault: GitHub and Gitea call that an error.
            (_, S::Cancelled | S::RunnerLost) => "error",
        }
    }

    /// The request's URL below `api`.
    pub fn url(self, api: &str, project: &str, sha: &str) -> String {
        let api = api.trim_end_matches('/');
        match self {
            Self::GitHub | Self::Gitea => format!("{api}/repos/{project}/statuses/{sha}"),
            Self::GitLab => format!("{api}/projects/{}/statuses/{sha}", gitlab_project(project)),
        }
    }

    /// The request's authentication header.
    pub fn auth(self, token: &str) -> (&'static str, String) {
        match self {
            Self::GitHub => ("authorization", format!("Bearer {token}")),
            Self::GitLab => ("private-token", token.to_string()),
            Self::Gitea => ("authorization", format!("token {token}")),
        }
    }

    /// The request's JSON body.
    pub fn body(self, s: &Outgoing<'_>) -> Value {
        let state = self.state(s.status);
        match self {
            Self::GitHub | Self::Gitea => json!({
                "state": state,
                "target_url": s.target_url,
                "description": s.description,
                "context": s.context,
            }),
            Self::GitLab => {
                let mut body = json!({
                    "state": state,
                    "name": s.context,
                    "target_url": s.target_url,
                    "description": s.description,
                });
                if let Some(branch) =
                    s.git_ref.strip_prefix("refs/heads/").or_else(|| s.git_ref.strip_prefix("refs/tags/"))
                {
                    body["ref"] = json!(branch);
                }
                if let Some(id) = s.pipeline_id {
                    body["pipeline_id"] = json!(id);
                }
                body
            }
        }
    }

    /// Where the latest status of each context of a commit is read.
    pub fn statuses_url(self, api: &str, project: &str, sha: &str) -> String {
        let api = api.trim_end_matches('/');
        match self {
            Self::GitHub => format!("{api}/repos/{project}/commits/{sha}/status?per_page=100"),
            Self::Gitea => format!("{api}/repos/{project}/commits/{sha}/status?limit=50"),
            Self::GitLab => {
                format!("{api}/projects/{}/repository/commits/{sha}/statuses?per_page=100", gitlab_project(project))
            }
        }
    }

    /// The statuses in such an answer: (context, state word, description,
    /// link), as the forge holds them.
    pub fn statuses_of(self, reply: &Value) -> Vec<(String, String, String, String)> {
        let list = match self {
            Self::GitLab => reply.as_array(),
            Self::GitHub | Self::Gitea => reply["statuses"].as_array(),
        };
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        list.into_iter()
            .flatten()
            .map(|st| match self {
                Self::GitHub => (s(&st["context"]), s(&st["state"]), s(&st["description"]), s(&st["target_url"])),
                Self::GitLab => (s(&st["name"]), s(&st["status"]), s(&st["description"]), s(&st["target_url"])),
                Self::Gitea => (s(&st["context"]), s(&st["status"]), s(&st["description"]), s(&st["target_url"])),
            })
            .collect()
    }

    /// The pipeline GitLab put the status in (from its reply).
    pub fn pipeline_of(self, reply: &Value) -> Option<u64> {
        (self == Self::GitLab).then(|| reply["pipeline_id"].as_u64()).flatten()
    }

    /// The forge's word for a deployment's state; `None` when there is
    /// nothing to tell it (GitLab takes deployments only once they run;
    /// Gitea and Forgejo have no deployments API).
    pub fn deployment_state(self, state: DeploymentState) -> Option<&'static str> {
        use DeploymentState as D;
        match (self, state) {
            (Self::Gitea, _) | (_, D::Unspecified) => None,
            (Self::GitHub, D::Waiting | D::Queued) => Some("queued"),
            (Self::GitHub, D::InProgress) => Some("in_progress"),
            (Self::GitHub, D::Success) => Some("success"),
            (Self::GitHub, D::Failure) => Some("failure"),
            // Not the code's fault: GitHub calls that an error.
            (Self::GitHub, D::Cancelled | D::Refused) => Some("error"),
            (Self::GitLab, D::Waiting | D::Queued) => None,
            (Self::GitLab, D::InProgress) => Some("running"),
            (Self::GitLab, D::Success) => Some("success"),
            (Self::GitLab, D::Failure) => Some("failed"),
            (Self::GitLab, D::Cancelled | D::Refused) => Some("canceled"),
        }
    }

    /// Where deployments are created (and, on GitHub, listed).
    pub fn deployments_url(self, api: &str, project: &str) -> String {
        let api = api.trim_end_matches('/');
        match self {
            Self::GitLab => format!("{api}/projects/{}/deployments", gitlab_project(project)),
            Self::GitHub | Self::Gitea => format!("{api}/repos/{project}/deployments"),
        }
    }

    /// Where a later state of deployment `id` (the forge's) goes: GitHub's
    /// statuses of it, GitLab's deployment itself.
    pub fn deployment_state_url(self, api: &str, project: &str, id: u64) -> String {
        match self {
            Self::GitLab => format!("{}/{id}", self.deployments_url(api, project)),
            Self::GitHub | Self::Gitea => format!("{}/{id}/statuses", self.deployments_url(api, project)),
        }
    }

    /// GitHub: where the deployments of a commit to an environment are
    /// listed (to find one made before a crash kept its id).
    pub fn deployments_of_url(self, api: &str, project: &str, sha: &str, environment: &str) -> String {
        let env: String = url::form_urlencoded::byte_serialize(environment.as_bytes()).collect();
        format!("{}?sha={sha}&environment={env}&per_page=100", self.deployments_url(api, project))
    }

    /// The id of Viaduct's deployment `id` among those a listing gave.
    pub fn deployment_in(self, reply: &Value, id: u64) -> Option<u64> {
        reply.as_array()?.iter().find(|d| d["payload"]["viaduct_deployment"].as_u64() == Some(id))?["id"].as_u64()
    }

    /// The request that creates a deployment. GitLab's carries its state
    /// (its first one: running or ended); GitHub's is followed by a status.
    pub fn deployment_create_body(self, d: &OutgoingDeployment<'_>) -> Value {
        match self {
            Self::GitLab => {
                let (git_ref, tag) = if let Some(branch) = d.git_ref.strip_prefix("refs/heads/") {
                    (branch, false)
                } else if let Some(tag) = d.git_ref.strip_prefix("refs/tags/") {
                    (tag, true)
                } else {
                    // A pull request's ref is neither: GitLab takes a sha.
                    (d.sha, false)
                };
                json!({
                    "environment": d.environment,
                    "sha": d.sha,
                    "ref": git_ref,
                    "tag": tag,
                    "status": self.deployment_state(d.state),
                })
            }
            Self::GitHub | Self::Gitea => {
                let run = d.run_id.parse::<u64>().map_or_else(|_| json!(d.run_id), |n| json!(n));
                json!({
                    "ref": d.sha,
                    "environment": d.environment,
                    "description": cut(&format!("{}/{} (Viaduct deployment {})", d.pipeline, d.job, d.id), 140),
                    // Deploy exactly this commit; its checks are Viaduct's own.
                    "auto_merge": false,
                    "required_contexts": [],
                    "payload": {"viaduct_deployment": d.id, "run": run},
                    "production_environment": d.environment == "production",
                })
            }
        }
    }

    /// The request of a state of a deployment the forge holds.
    pub fn deployment_state_body(self, d: &OutgoingDeployment<'_>) -> Value {
        let state = self.deployment_state(d.state);
        match self {
            Self::GitLab => json!({ "status": state }),
            Self::GitHub | Self::Gitea => {
                let mut body = json!({
                    "state": state,
                    "description": cut(d.description, 140),
                    "log_url": d.log_url,
                });
                if d.environment_url.starts_with("https://") || d.environment_url.starts_with("http://") {
                    body["environment_url"] = json!(d.environment_url);
                }
                body
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_a_word_each_forge_knows() {
        let known = |k: Kind| match k {
            Kind::GitHub => &["error", "failure", "pending", "success"][..],
            Kind::GitLab => &["pending", "running", "success", "failed", "canceled"][..],
            Kind::Gitea => &["pending", "success", "error", "failure", "warning"][..],
        };
        for kind in [Kind::GitHub, Kind::GitLab, Kind::Gitea] {
            for s in 0..=9 {
                let status = Status::try_from(s).unwrap();
                assert!(known(kind).contains(&kind.state(status)), "{kind:?} {status:?}");
            }
            assert_eq!(kind.state(Status::Skipped), "success", "a skip never blocks a merge");
            assert_eq!(Kind::parse(kind.word()), Some(kind));
        }
        assert_eq!(Kind::parse("Forgejo"), Some(Kind::Gitea));
        assert_eq!(Kind::parse("bitbucket"), None);
    }

    #[test]
    fn every_deployment_state_has_each_forges_word_or_none() {
        use DeploymentState as D;
        let all =
            [D::Unspecified, D::Waiting, D::Queued, D::InProgress, D::Success, D::Failure, D::Cancelled, D::Refused];
        assert_eq!(all.len(), 8, "every DeploymentState");
        assert!(D::try_from(8).is_err(), "a new DeploymentState needs a word here");
        let words = |kind: Kind| all.map(|s| kind.deployment_state(s));
        assert_eq!(
            words(Kind::GitHub),
            [
                None,
                Some("queued"),
                Some("queued"),
                Some("in_progress"),
                Some("success"),
                Some("failure"),
                Some("error"),
                Some("error")
            ]
        );
        // GitLab's API creates deployments only running or ended.
        assert_eq!(
            words(Kind::GitLab),
            [None, None, None, Some("running"), Some("success"), Some("failed"), Some("canceled"), Some("canceled")]
        );
        assert_eq!(words(Kind::Gitea), [None; 8], "Gitea and Forgejo have no deployments API");
        // Each a word of the forge's documented vocabulary.
        let github = ["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];
        assert!(words(Kind::GitHub).iter().flatten().all(|w| github.contains(w)));
        let gitlab = ["running", "success", "failed", "canceled"];
        assert!(words(Kind::GitLab).iter().flatten().all(|w| gitlab.contains(w)));
        // Ranks only go up along a deployment's life; every end is one rank.
        let ranks = all.map(deployment_rank);
        assert_eq!(ranks, [0, 1, 2, 3, 4, 4, 4, 4]);
    }

    fn deployment(state: DeploymentState, git_ref: &'static str) -> OutgoingDeployment<'static> {
        OutgoingDeployment {
            id: 12,
            run_id: "7",
            pipeline: "ci",
            job: "deploy",
            sha: "abc",
            git_ref,
            environment: "production",
            state,
            description: "Deploying to production",
            log_url: "https://ci.example/runs/7/jobs/7.2",
            environment_url: "https://app.example",
        }
    }

    #[test]
    fn deployment_requests_follow_each_api() {
        let d = deployment(DeploymentState::Queued, "refs/heads/main");
        assert_eq!(Kind::GitHub.deployments_url(GITHUB_API, "o/app"), "https://api.github.com/repos/o/app/deployments");
        assert_eq!(
            Kind::GitHub.deployment_state_url(GITHUB_API, "o/app", 5),
            "https://api.github.com/repos/o/app/deployments/5/statuses"
        );
        assert_eq!(
            Kind::GitHub.deployments_of_url(GITHUB_API, "o/app", "abc", "prod eu"),
            "https://api.github.com/repos/o/app/deployments?sha=abc&environment=prod+eu&per_page=100"
        );
        let create = Kind::GitHub.deployment_create_body(&d);
        assert_eq!(
            create,
            json!({
                "ref": "abc",
                "environment": "production",
                "description": "ci/deploy (Viaduct deployment 12)",
                "auto_merge": false,
                "required_contexts": [],
                "payload": {"viaduct_deployment": 12, "run": 7},
                "production_environment": true,
            })
        );
        let listed =
            json!([{"id": 3, "payload": {"viaduct_deployment": 11}}, {"id": 4, "payload": {"viaduct_deployment": 12}}]);
        assert_eq!(Kind::GitHub.deployment_in(&listed, 12), Some(4));
        assert_eq!(Kind::GitHub.deployment_in(&listed, 13), None);
        let status = Kind::GitHub.deployment_state_body(&d);
        assert_eq!(
            status,
            json!({
                "state": "queued",
                "description": "Deploying to production",
                "log_url": "https://ci.example/runs/7/jobs/7.2",
                "environment_url": "https://app.example",
            })
        );
        let odd = OutgoingDeployment { environment_url: "app.example", ..deployment(DeploymentState::Success, "") };
        assert!(Kind::GitHub.deployment_state_body(&odd).get("environment_url").is_none(), "only a web URL");

        assert_eq!(
            Kind::GitLab.deployments_url("https://gl/api/v4/", "g/app"),
            "https://gl/api/v4/projects/g%2Fapp/deployments"
        );
        assert_eq!(
            Kind::GitLab.deployment_state_url("https://gl/api/v4", "g/app", 9),
            "https://gl/api/v4/projects/g%2Fapp/deployments/9"
        );
        let running = deployment(DeploymentState::InProgress, "refs/heads/main");
        assert_eq!(
            Kind::GitLab.deployment_create_body(&running),
            json!({"environment": "production", "sha": "abc", "ref": "main", "tag": false, "status": "running"})
        );
        let tagged = Kind::GitLab.deployment_create_body(&deployment(DeploymentState::Success, "refs/tags/v1"));
        assert_eq!((tagged["ref"].as_str(), tagged["tag"].as_bool()), (Some("v1"), Some(true)));
        let pr = Kind::GitLab.deployment_create_body(&deployment(DeploymentState::Failure, "refs/pull/3/head"));
        assert_eq!((pr["ref"].as_str(), pr["status"].as_str()), (Some("abc"), Some("failed")));
        let update = Kind::GitLab.deployment_state_body(&deployment(DeploymentState::Cancelled, "refs/heads/main"));
        assert_eq!(update, json!({"status": "canceled"}));
    }

    #[test]
    fn requests_follow_each_api() {
        assert_eq!(
            Kind::GitLab.url("https://gl.example/api/v4/", "group/sub/app", "abc"),
            "https://gl.example/api/v4/projects/group%2Fsub%2Fapp/statuses/abc"
        );
        assert_eq!(Kind::GitHub.url(GITHUB_API, "o/app", "abc"), "https://api.github.com/repos/o/app/statuses/abc");
        let s = Outgoing {
            project: "o/app",
            sha: "abc",
            git_ref: "refs/heads/main",
            context: "viaduct/ci",
            status: Status::Running,
            description: "Running",
            target_url: "https://ci.example/runs/1",
            pipeline_id: Some(9),
        };
        let gl = Kind::GitLab.body(&s);
        assert_eq!(
            (gl["state"].as_str(), gl["ref"].as_str(), gl["pipeline_id"].as_u64()),
            (Some("running"), Some("main"), Some(9))
        );
        let combined = serde_json::json!({"statuses": [{"context": "viaduct/ci", "state": "success", "description": "d", "target_url": "u"}]});
        assert_eq!(
            Kind::GitHub.statuses_of(&combined),
            [("viaduct/ci".into(), "success".into(), "d".into(), "u".into())]
        );
        let gitea = serde_json::json!({"statuses": [{"context": "viaduct/ci", "status": "failure", "description": "d", "target_url": "u"}]});
        assert_eq!(Kind::Gitea.statuses_of(&gitea)[0].1, "failure");
        let gitlab =
            serde_json::json!([{"name": "viaduct/ci", "status": "running", "description": "d", "target_url": "u"}]);
        assert_eq!(Kind::GitLab.statuses_of(&gitlab)[0].1, "running");
        assert_eq!(
            Kind::GitLab.statuses_url("https://gl/api/v4", "g/app", "abc"),
            "https://gl/api/v4/projects/g%2Fapp/repository/commits/abc/statuses?per_page=100"
        );
        let gh = Kind::GitHub.body(&s);
        assert_eq!((gh["state"].as_str(), gh["context"].as_str()), (Some("pending"), Some("viaduct/ci")));
        assert!(gh.get("pipeline_id").is_none());
    }
}
