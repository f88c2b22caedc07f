//! Who may call what: roles, grants, and the one table of what every RPC
//! and HTTP route needs.
//!
//! A principal (a person's or service's token, or a runner) has grants: a
//! role globally or on one repository. Roles are ordered — read < trigger <
//! push < maintain < admin — and each includes the ones before. [`TABLE`]
//! says, for every method, the role it needs and where:
//! - [`Scope::Global`]: the role on every repository (a global grant);
//! - [`Scope::Repo`]: the role on the repository the request concerns.
//!   The API layer lets the call in when the principal has the role
//!   somewhere, and the handler narrows it to the repository it resolves
//!   (a run's, a secret's…) with [`Access::require`], or filters what it
//!   lists with [`Access::repos`];
//! - [`Scope::Signed`]: any authenticated person (their own tokens, who
//!   they are);
//! - [`Scope::Runner`]: runner tokens (the runner protocol, plugin fetches);
//! - [`Scope::Open`]: no token (health, reflection).
//!
//! A method missing from the table is refused: a new RPC is closed until
//! someone decides who may call it.

use viaduct_proto::{
    ROLE_WORDS, RoleWord,
    v1::{Grant, Role},
};

use crate::error::{Error, Result};

/// Where a method's role applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No token needed.
    Open,
    /// Any signed-in person.
    Signed,
    /// The role on every repository.
    Global,
    /// The role on the repository the request concerns.
    Repo,
    /// Runner tokens only.
    Runner,
    /// Runner tokens, or the role globally (plugins: runners fetch them).
    RunnerOrGlobal,
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The role (ignored for `Open`, `Signed` and `Runner`).
    pub role: Role,
    /// Where.
    pub scope: Scope,
}

const fn need(role: Role, scope: Scope) -> Need {
    Need { role, scope }
}

use Role::{Admin as A, Maintain as M, Push as P, Read as R, Trigger as T};
use Scope::{Global as G, Repo as Rp};

/// Every gRPC method and what it needs (see the module docs). HTTP routes
/// are in [`ROUTES`].
pub const TABLE: &[(&str, Need)] = &[
    ("/viaduct.v1.Runs/Submit", need(T, G)),
    ("/viaduct.v1.Runs/Trigger", need(T, Rp)),
    ("/viaduct.v1.Runs/Get", need(R, Rp)),
    ("/viaduct.v1.Runs/List", need(R, Rp)),
    ("/viaduct.v1.Runs/Cancel", need(T, Rp)),
    ("/viaduct.v1.Runs/Retry", need(T, Rp)),
    ("/viaduct.v1.Debug/Shell", need(P, Rp)),
    ("/viaduct.v1.Runs/Approve", need(T, Rp)),
    ("/viaduct.v1.Runs/Watch", need(R, Rp)),
    ("/viaduct.v1.Logs/Follow", need(R, Rp)),
    ("/viaduct.v1.Logs/Get", need(R, Rp)),
    ("/viaduct.v1.Pipelines/Validate", need(R, G)),
    ("/viaduct.v1.Pipelines/Create", need(M, G)),
    ("/viaduct.v1.Pipelines/Update", need(M, G)),
    ("/viaduct.v1.Pipelines/Get", need(R, G)),
    ("/viaduct.v1.Pipelines/List", need(R, G)),
    ("/viaduct.v1.Pipelines/Delete", need(M, G)),
    ("/viaduct.v1.Pipelines/Schema", need(R, G)),
    ("/viaduct.v1.Runners/List", need(R, G)),
    ("/viaduct.v1.Runners/Get", need(R, G)),
    ("/viaduct.v1.Runners/Stats", need(R, G)),
    ("/viaduct.v1.Runners/Pending", need(R, G)),
    ("/viaduct.v1.Runners/Watch", need(R, G)),
    ("/viaduct.v1.Runners/Drain", need(A, G)),
    ("/viaduct.v1.Runners/Remove", need(A, G)),
    ("/viaduct.v1.Runners/Update", need(A, G)),
    ("/viaduct.v1.Runners/CreateRegistrationToken", need(A, G)),
    ("/viaduct.v1.Repos/Create", need(A, G)),
    ("/viaduct.v1.Repos/Get", need(R, Rp)),
    ("/viaduct.v1.Repos/List", need(R, Rp)),
    ("/viaduct.v1.Repos/Delete", need(A, G)),
    ("/viaduct.v1.Repos/Sync", need(P, Rp)),
    ("/viaduct.v1.Repos/Update", need(M, Rp)),
    ("/viaduct.v1.Environments/Put", need(M, Rp)),
    ("/viaduct.v1.Environments/Get", need(R, Rp)),
    ("/viaduct.v1.Environments/List", need(R, Rp)),
    ("/viaduct.v1.Environments/Delete", need(M, Rp)),
    ("/viaduct.v1.Deployments/List", need(R, Rp)),
    ("/viaduct.v1.Deployments/Get", need(R, Rp)),
    // The handler then asks for the environment's approval role.
    ("/viaduct.v1.Deployments/Approve", need(T, Rp)),
    ("/viaduct.v1.Deployments/Reject", need(T, Rp)),
    ("/viaduct.v1.Deployments/Promote", need(T, Rp)),
    ("/viaduct.v1.Deployments/Rollback", need(T, Rp)),
    ("/viaduct.v1.Services/List", need(R, Rp)),
    ("/viaduct.v1.Services/Get", need(R, Rp)),
    ("/viaduct.v1.Services/Delete", need(M, Rp)),
    ("/viaduct.v1.Secrets/Set", need(M, Rp)),
    ("/viaduct.v1.Secrets/List", need(M, Rp)),
    ("/viaduct.v1.Secrets/Delete", need(M, Rp)),
    ("/viaduct.v1.Plugins/Publish", need(A, G)),
    ("/viaduct.v1.Plugins/List", need(R, Scope::RunnerOrGlobal)),
    ("/viaduct.v1.Plugins/Get", need(R, Scope::RunnerOrGlobal)),
    ("/viaduct.v1.Plugins/Fetch", need(R, Scope::RunnerOrGlobal)),
    ("/viaduct.v1.Artifacts/List", need(R, Rp)),
    ("/viaduct.v1.Artifacts/Download", need(R, Rp)),
    ("/viaduct.v1.Artifacts/Link", need(R, Rp)),
    ("/viaduct.v1.Caches/List", need(R, Rp)),
    ("/viaduct.v1.Caches/Delete", need(M, Rp)),
    ("/viaduct.v1.Caches/Stats", need(R, G)),
    ("/viaduct.v1.Tokens/Create", need(R, Scope::Signed)),
    ("/viaduct.v1.Tokens/List", need(R, Scope::Signed)),
    ("/viaduct.v1.Tokens/Revoke", need(R, Scope::Signed)),
    ("/viaduct.v1.Tokens/Rotate", need(R, Scope::Signed)),
    ("/viaduct.v1.Tokens/Whoami", need(R, Scope::Signed)),
    ("/viaduct.v1.Users/Create", need(A, G)),
    ("/viaduct.v1.Users/Get", need(A, G)),
    ("/viaduct.v1.Users/List", need(A, G)),
    ("/viaduct.v1.Users/Update", need(A, G)),
    ("/viaduct.v1.Users/Delete", need(A, G)),
    ("/viaduct.v1.Audit/List", need(A, G)),
    ("/viaduct.v1.Stats/Get", need(R, Rp)),
    ("/viaduct.v1.Admin/Prune", need(A, G)),
    ("/viaduct.v1.Admin/Status", need(A, G)),
    ("/viaduct.v1.RunnerAgent/Register", need(R, Scope::Open)),
    ("/viaduct.v1.RunnerAgent/Connect", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/FetchSource", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/RestoreCache", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/SaveCache", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/UploadArtifact", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/SaveSnapshot", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/RestoreSnapshot", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/FindReuse", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/DebugSession", need(R, Scope::Runner)),
    ("/viaduct.v1.RunnerAgent/FetchArtifacts", need(R, Scope::Runner)),
];

/// HTTP routes (by prefix) and what they need; the git routes' role
/// depends on the direction (read to fetch, push to push), and webhooks
/// and artifact links carry their own signatures.
pub const ROUTES: &[(&str, &str)] = &[
    ("/healthz", "open"),
    ("/metrics", "read, globally (or --metrics-listen)"),
    ("/git/", "read on the repository to fetch, push to push"),
    ("/webhooks/", "the repository's webhook signature"),
    ("/artifacts/", "a signed link from Artifacts.Link"),
    ("/debug/shell", "push on the job's repository, as Debug.Shell (by cookie: from this origin only)"),
    ("/ (web UI)", "open (the UI signs in with a token)"),
];

/// What a method needs; `None`: it is not in the table (refused).
pub fn need_of(path: &str) -> Option<Need> {
    if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
        return Some(need(R, Scope::Open));
    }
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, n)| *n)
}

/// The words of a role.
pub fn role_name(role: Role) -> &'static str {
    role.word()
}

/// The role a word names.
pub fn parse_role(word: &str) -> Result<Role> {
    Role::from_word(word).ok_or_else(|| Error::invalid(format!("`{}` is not a role ({ROLE_WORDS})", word.trim())))
}

/// A set of grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(pub Vec<Grant>);

fn level(r: i32) -> i32 {
    Role::try_from(r).map_or(0, |r| r as i32)
}

/// The repositories a principal may act on with some role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repos {
    /// All of them (a global grant).
    All,
    /// These.
    Some(Vec<String>),
}

impl Repos {
    /// Whether `repo` is among them (`""`: runs without a repository,
    /// which only a global grant covers).
    pub fn contains(&self, repo: &str) -> bool {
        match self {
            Repos::All => true,
            Repos::Some(list) => !repo.is_empty() && list.iter().any(|r| r == repo),
        }
    }
}

impl Grants {
    /// All of `role`, globally.
    pub fn global(role: Role) -> Self {
        Self(vec![Grant { role: role as i32, repo: String::new() }])
    }

    /// Whether they allow `role` on `repo` (`None`: globally; `Some("")`:
    /// something that belongs to no repository — only a global grant).
    pub fn allows(&self, role: Role, repo: Option<&str>) -> bool {
        self.0.iter().any(|g| {
            level(g.role) >= role as i32 && (g.repo.is_empty() || repo.is_some_and(|r| !r.is_empty() && r == g.repo))
        })
    }

    /// Whether they allow `role` on at least one repository.
    pub fn allows_somewhere(&self, role: Role) -> bool {
        self.0.iter().any(|g| level(g.role) >= role as i32)
    }

    /// Where they allow `role`.
    pub fn repos(&self, role: Role) -> Repos {
        if self.allows(role, None) {
            return Repos::All;
        }
        let mut list: Vec<String> =
            self.0.iter().filter(|g| level(g.role) >= role as i32).map(|g| g.repo.clone()).collect();
        list.sort();
        list.dedup();
        Repos::Some(list)
    }

    /// Whether every grant of `other` is within these (a token cannot be
    /// made stronger than its maker).
    pub fn covers(&self, other: &Grants) -> bool {
        other.0.iter().all(|g| {
            let role = Role::try_from(g.role).unwrap_or(Role::Admin);
            self.allows(role, if g.repo.is_empty() { None } else { Some(&g.repo) })
        })
    }

    /// The part of `self` that `limit` also allows (a user's token is cut
    /// down to what the user has now): each pair of grants meets on the
    /// narrower place with the weaker role.
    pub fn within(&self, limit: &Grants) -> Grants {
        let mut met = Vec::new();
        for g in &self.0 {
            for l in &limit.0 {
                let repo = match (g.repo.as_str(), l.repo.as_str()) {
                    ("", r) | (r, "") => r,
                    (a, b) if a == b => a,
                    _ => continue,
                };
                let role = level(g.role).min(level(l.role));
                if role > 0 {
                    met.push(Grant { role, repo: repo.to_string() });
                }
            }
        }
        // Without the grants another one already includes.
        let all = Grants(met.clone());
        let mut out: Vec<Grant> = met
            .into_iter()
            .filter(|g| {
                !all.0
                    .iter()
                    .any(|o| o != g && level(o.role) >= level(g.role) && (o.repo.is_empty() || o.repo == g.repo))
            })
            .collect();
        out.sort_by(|a, b| (&a.repo, a.role).cmp(&(&b.repo, b.role)));
        out.dedup();
        Grants(out)
    }

    /// Checks grants written by a caller: known roles, repository names.
    pub fn check(grants: &[Grant]) -> Result<()> {
        for g in grants {
            if !matches!(Role::try_from(g.role), Ok(r) if r != Role::Unspecified) {
                return Err(Error::invalid("a grant needs a role (read, trigger, push, maintain, admin)"));
            }
            if g.repo.len() > 100 || g.repo.chars().any(|c| c.is_control() || c == '/') {
                return Err(Error::invalid(format!("`{}` is not a repository name", g.repo.escape_debug())));
            }
        }
        Ok(())
    }
}

/// What a request's principal may do: put into the request by the API
/// layer for handlers to narrow repository-scoped calls.
#[derive(Debug, Clone)]
pub struct Access {
    /// Who: a user's name, a service token's name, `runner <id>`.
    pub actor: String,
    /// The user the token acts for (empty: a service token or a runner).
    pub owner: String,
    /// The token's public id (empty for runners).
    pub token_id: String,
    /// The token's hash (to check it is still valid on long streams).
    pub token_hash: [u8; 32],
    /// What it may do now.
    pub grants: Grants,
    /// A runner's id, for runner tokens.
    pub runner: Option<String>,
    /// The role the method needs.
    pub need: Role,
    /// What the call acted on, for the audit log (set by the handler).
    pub target: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl Access {
    /// A caller without a token (runner registration).
    pub fn anonymous(need: Role) -> Self {
        Self {
            actor: "unauthenticated".into(),
            owner: String::new(),
            token_id: String::new(),
            token_hash: [0; 32],
            grants: Grants::default(),
            runner: None,
            need,
            target: std::sync::Arc::default(),
        }
    }

    /// Refuses unless the principal has the method's role on `repo`
    /// (`""`: the thing belongs to no repository).
    pub fn require(&self, repo: &str) -> Result<()> {
        self.require_role(self.need, repo)
    }

    /// Refuses unless the principal has the method's role on every one of
    /// `repos` — globally when the list is empty (it means every
    /// repository, e.g. a secret's scope).
    pub fn require_each(&self, repos: &[String]) -> Result<()> {
        if repos.is_empty() {
            return self.require("");
        }
        repos.iter().try_for_each(|r| self.require(r))
    }

    /// Refuses unless the principal has `role` on `repo`.
    pub fn require_role(&self, role: Role, repo: &str) -> Result<()> {
        if self.grants.allows(role, Some(repo)) {
            return Ok(());
        }
        let on = if repo.is_empty() { "globally".to_string() } else { format!("on repository `{repo}`") };
        Err(Error::PermissionDenied(format!("{} needs the {} role {on}", self.actor, role_name(role))))
    }

    /// Where the principal has the method's role.
    pub fn repos(&self) -> Repos {
        self.grants.repos(self.need)
    }

    /// Names what the call acts on, for the audit log (the first name
    /// given counts).
    pub fn target(&self, what: impl Into<String>) {
        let what = what.into();
        // The call's `rpc` span (see `gate::check`) says it too.
        tracing::Span::current().record("target", what.as_str());
        let _ = self.target.set(what);
    }

    /// The runner making the call (runner tokens only).
    pub fn runner(&self) -> Result<&str> {
        self.runner
            .as_deref()
            .ok_or_else(|| Error::PermissionDenied("this method needs a runner token (from Register)".into()))
    }

    /// Whether the principal is a global admin.
    pub fn is_admin(&self) -> bool {
        self.grants.allows(Role::Admin, None)
    }
}

/// The [`Access`] of a request (the API layer always sets one on the
/// methods that need a token).
pub fn of<T>(req: &tonic::Request<T>) -> Result<&Access> {
    req.extensions()
        .get::<Access>()
        .ok_or_else(|| Error::Internal("the request reached a handler without its access".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(role: Role, repo: &str) -> Grant {
        Grant { role: role as i32, repo: repo.into() }
    }

    #[test]
    fn roles_include_the_ones_before_and_repos_are_separate() {
        let g = Grants(vec![on(Role::Maintain, "app"), on(Role::Read, "")]);
        assert!(g.allows(Role::Read, None) && g.allows(Role::Read, Some("web")));
        assert!(g.allows(Role::Push, Some("app")) && !g.allows(Role::Push, Some("web")));
        assert!(!g.allows(Role::Trigger, Some("")), "runs without a repository need a global grant");
        assert!(!g.allows(Role::Admin, Some("app")));
        assert_eq!(g.repos(Role::Trigger), Repos::Some(vec!["app".into()]));
        assert_eq!(g.repos(Role::Read), Repos::All);
        assert!(g.covers(&Grants(vec![on(Role::Trigger, "app")])));
        assert!(!g.covers(&Grants(vec![on(Role::Trigger, "")])));
        // A global admin token of a user who maintains `app` and reads
        // everything: maintain on `app`, read elsewhere.
        let cut = Grants(vec![on(Role::Admin, ""), on(Role::Trigger, "app")]).within(&g);
        assert_eq!(cut, Grants(vec![on(Role::Read, ""), on(Role::Maintain, "app")]));
        // A token for another repository than the user's: nothing.
        let none = Grants(vec![on(Role::Admin, "web")]).within(&Grants(vec![on(Role::Admin, "app")]));
        assert_eq!(none, Grants(vec![]));
    }

    #[test]
    fn every_method_of_every_service_is_in_the_table() {
        let fds: prost_types::FileDescriptorSet =
            prost::Message::decode(viaduct_proto::v1::FILE_DESCRIPTOR_SET).expect("descriptors");
        for file in fds.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(need_of(&path).is_some(), "{path} is not in access::TABLE");
                }
            }
        }
    }
}
