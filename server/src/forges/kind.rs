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

use serde_json::{Value, json};
use viaduct_proto::v1::Status;

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
            Self::GitLab => {
                let id: String = url::form_urlencoded::byte_serialize(project.as_bytes()).collect();
                format!("{api}/projects/{id}/statuses/{sha}")
            }
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
                let id: String = url::form_urlencoded::byte_serialize(project.as_bytes()).collect();
                format!("{api}/projects/{id}/repository/commits/{sha}/statuses?per_page=100")
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
