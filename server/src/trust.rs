//! Who is trusted with what (see `docs/security.md` for the threat model).
//!
//! - **The trust of a run.** Runs of pushes, schedules, manual triggers and
//!   the API are trusted: whoever caused them can push, or holds a token.
//!   A pull request is trusted only when its head is in the repository
//!   itself (not a fork) *and* the repository's policy trusts its sender.
//!   Whether a pull request runs at all is decided by the base branch's
//!   pipeline file (the caller reads it there), never by the head's.
//! - **Approval.** A pull request whose sender the policy does not trust
//!   waits for `Runs.Approve`. Approval lets it run; it never makes it
//!   trusted: a fork stays a fork.
//! - **What an untrusted run cannot have**: any secret, registry
//!   credentials, a protected runner, network access for plugins. A
//!   trusted run gets a secret only where the secret's scope admits it
//!   (repository, pipeline, branch, pull requests); registry credentials
//!   are bound to one registry host.
//! - **Names a run can touch**: its concurrency group is namespaced by
//!   repository (and pull request), so a run can only supersede or cancel
//!   runs of its own repository (pull request); caches are scoped the same
//!   way in `caches`.
//!
//! Every rule here is a pure function of stored facts (the run's source,
//! the repository's policy, the secret's scope), used both when a run is
//! planned (to fail early, naming the rule) and when a job is dispatched
//! (the only place a secret's value leaves the server).

use viaduct_proto::v1::{EnvironmentRules, PullRequestPolicy, RunSource, SecretScope, Trust};

use crate::error::{Error, Result};

/// GitHub author associations trusted when a repository has no policy.
pub const DEFAULT_TRUSTED_ASSOCIATIONS: &[&str] = &["OWNER", "MEMBER", "COLLABORATOR"];

/// The policy of a repository that never set one.
pub fn default_policy() -> PullRequestPolicy {
    PullRequestPolicy {
        trusted_senders: Vec::new(),
        trusted_associations: DEFAULT_TRUSTED_ASSOCIATIONS.iter().map(|s| s.to_string()).collect(),
    }
}

/// What the policy decides about a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Trusted or untrusted.
    pub trust: Trust,
    /// Why it must wait for approval; `None`: it may start at once.
    pub approval: Option<String>,
}

/// Decides a pull request's trust from its `source` (fork, sender and the
/// forge's association, all from the signed webhook) and the repository's
/// `policy` (`None`: [`default_policy`]).
pub fn of_pull_request(policy: Option<&PullRequestPolicy>, source: &RunSource) -> Decision {
    let default = default_policy();
    let policy = policy.unwrap_or(&default);
    let sender_trusted = !source.sender.is_empty()
        && (policy.trusted_senders.iter().any(|s| s.eq_ignore_ascii_case(&source.sender))
            || (!source.sender_association.is_empty()
                && policy.trusted_associations.iter().any(|a| a.eq_ignore_ascii_case(&source.sender_association))));
    let trust = if !source.fork && sender_trusted { Trust::Trusted } else { Trust::Untrusted };
    let approval = (!sender_trusted).then(|| {
        let who =
            if source.sender.is_empty() { "an unknown sender".to_string() } else { format!("`{}`", source.sender) };
        let origin = if source.fork { format!("a fork ({})", source.head_repo) } else { "the repository".to_string() };
        format!(
            "pull request #{} by {who} from {origin}: the repository does not trust its sender",
            source.pull_request
        )
    });
    Decision { trust, approval }
}

/// The trust of a run recorded before trust existed (all were trusted).
pub fn effective(trust: i32) -> Trust {
    match Trust::try_from(trust) {
        Ok(Trust::Untrusted) => Trust::Untrusted,
        _ => Trust::Trusted,
    }
}

/// Checks a scope before it is stored: repository names, branch globs and
/// the registry host must be well formed.
pub fn check_scope(scope: &SecretScope) -> Result<()> {
    for g in &scope.branches {
        viaduct_pipeline::glob::Glob::new(g).map_err(|e| Error::invalid(format!("scope.branches: {e}")))?;
    }
    for r in scope.repos.iter().chain(&scope.pipelines) {
        if r.is_empty() || r.len() > 200 || r.chars().any(char::is_control) {
            return Err(Error::invalid(format!("scope: `{}` is not a repository or pipeline name", r.escape_debug())));
        }
    }
    if !scope.environments.is_empty() && scope.repos.len() != 1 {
        return Err(Error::invalid(
            "scope.environments needs exactly one repository in scope.repos: environments belong to a repository \
             (with two, another repository's maintainers could make an environment of that name and take it)",
        ));
    }
    for e in &scope.environments {
        if let Some(why) = viaduct_pipeline::plan::environment_name_problem(e) {
            return Err(Error::invalid(format!("scope.environments: `{}`: {why}", e.escape_debug())));
        }
    }
    let host = &scope.registry;
    if !host.is_empty()
        && (host.contains('/') || host.chars().any(|c| c.is_whitespace() || c.is_control()) || host.len() > 253)
    {
        return Err(Error::invalid(format!(
            "scope.registry: `{}` is not a registry host (e.g. `registry.example.com` or `127.0.0.1:5000`)",
            host.escape_debug()
        )));
    }
    Ok(())
}

/// The facts about a run that secret scopes are checked against.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts<'a> {
    /// What started it.
    pub source: &'a RunSource,
    /// Its pipeline's `name:`.
    pub pipeline: &'a str,
    /// Its trust.
    pub trust: Trust,
    /// The environment the job deploys to (`None`: none, or not a job).
    /// Its rules are checked before the job is queued (`deployment_refusal`
    /// and the approval gate), so a job with it reaches dispatch only once
    /// they passed.
    pub environment: Option<&'a str>,
}

/// Why secret `name` (with `scope`) may not go to a job of this run, or
/// `None` when it may.
pub fn secret_refusal(name: &str, scope: &SecretScope, run: &RunFacts<'_>) -> Option<String> {
    if scope.server_only {
        return Some(format!(
            "secret `{name}` is refused: it is for the server only (a forge token or key), never for jobs or notifications"
        ));
    }
    let src = run.source;
    if run.trust == Trust::Untrusted {
        return Some(format!(
            "secret `{name}` is refused: this run is an untrusted pull request (a fork or an untrusted sender), \
             and untrusted runs get no secrets"
        ));
    }
    if !scope.repos.is_empty() && !scope.repos.contains(&src.repo) {
        let this = if src.repo.is_empty() { "no repository".to_string() } else { format!("`{}`", src.repo) };
        return Some(format!(
            "secret `{name}` is refused: its scope admits repositories {} (this run is of {this})",
            list(&scope.repos)
        ));
    }
    if !scope.pipelines.is_empty() && !scope.pipelines.iter().any(|p| p == run.pipeline) {
        return Some(format!(
            "secret `{name}` is refused: its scope admits pipelines {} (this run is of `{}`)",
            list(&scope.pipelines),
            run.pipeline
        ));
    }
    if !scope.branches.is_empty() {
        let matches = !src.branch.is_empty()
            && scope
                .branches
                .iter()
                .any(|g| viaduct_pipeline::glob::Glob::new(g).is_ok_and(|g| g.is_match(&src.branch)));
        if !matches {
            let this = if src.branch.is_empty() { "no branch".to_string() } else { format!("branch `{}`", src.branch) };
            return Some(format!(
                "secret `{name}` is refused: its scope admits branches {} (this run is of {this})",
                list(&scope.branches)
            ));
        }
    }
    if src.event == "pull_request" && !scope.pull_requests {
        return Some(format!(
            "secret `{name}` is refused: its scope does not admit pull requests (set it with \
             `--pull-requests` to give it to trusted ones)"
        ));
    }
    if !scope.environments.is_empty() && !run.environment.is_some_and(|e| scope.environments.iter().any(|s| s == e)) {
        let this = match run.environment {
            Some(e) => format!("this job deploys to `{e}`"),
            None => "this job deploys to no environment".to_string(),
        };
        return Some(format!(
            "secret `{name}` is refused: it belongs to environments {} ({this})",
            list(&scope.environments)
        ));
    }
    None
}

/// Why a run may not deploy to an environment with `rules`, or `None` when
/// its ref may (approval and the wait timer are the engine's gates).
pub fn deployment_refusal(env: &str, rules: &EnvironmentRules, run: &RunFacts<'_>) -> Option<String> {
    let src = run.source;
    if run.trust == Trust::Untrusted {
        return Some(format!(
            "an untrusted run (a pull request from a fork or an untrusted sender) never deploys: `{env}` refused it"
        ));
    }
    if src.repo.is_empty() {
        return Some(format!(
            "environment `{env}`: only runs of a repository deploy (environments belong to repositories)"
        ));
    }
    if src.event == "pull_request" {
        return (!rules.pull_requests)
            .then(|| format!("environment `{env}` does not admit pull requests (its rules set no `pull_requests`)"));
    }
    if rules.branches.is_empty() && rules.tags.is_empty() {
        return None;
    }
    let matches = |globs: &[String], name: &str| {
        !name.is_empty() && globs.iter().any(|g| viaduct_pipeline::glob::Glob::new(g).is_ok_and(|g| g.is_match(name)))
    };
    if matches(&rules.branches, &src.branch) || matches(&rules.tags, &src.tag) {
        return None;
    }
    let this = if !src.branch.is_empty() {
        format!("branch `{}`", src.branch)
    } else if !src.tag.is_empty() {
        format!("tag `{}`", src.tag)
    } else {
        "a commit without a branch or tag".to_string()
    };
    let mut admits = Vec::new();
    if !rules.branches.is_empty() {
        admits.push(format!("branches {}", list(&rules.branches)));
    }
    if !rules.tags.is_empty() {
        admits.push(format!("tags {}", list(&rules.tags)));
    }
    Some(format!("environment `{env}` admits {} (this run is of {this})", admits.join(" and ")))
}

/// Checks an environment's rules before they are stored.
pub fn check_rules(rules: &EnvironmentRules) -> Result<()> {
    for g in rules.branches.iter().chain(&rules.tags).chain(&rules.probe_hosts) {
        viaduct_pipeline::glob::Glob::new(g).map_err(|e| Error::invalid(format!("rules: `{g}`: {e}")))?;
    }
    for list in [&rules.branches, &rules.tags, &rules.probe_hosts, &rules.on_change_pipelines] {
        if list.len() > 50 || list.iter().any(|w| w.is_empty() || w.len() > 200 || w.chars().any(char::is_control)) {
            return Err(Error::invalid("rules: at most 50 entries of each list, each 1 to 200 printable characters"));
        }
    }
    if rules.wait_seconds > MAX_WAIT_SECONDS {
        return Err(Error::invalid(format!(
            "rules.wait_seconds: {} is more than 30 days ({MAX_WAIT_SECONDS})",
            rules.wait_seconds
        )));
    }
    match viaduct_proto::v1::Role::try_from(rules.approval_role) {
        Ok(viaduct_proto::v1::Role::Unspecified) => {
            if rules.prevent_self_approval {
                return Err(Error::invalid("rules.prevent_self_approval needs an approval_role"));
            }
        }
        Ok(viaduct_proto::v1::Role::Read) => {
            return Err(Error::invalid("rules.approval_role: readers cannot approve deployments (at least trigger)"));
        }
        Ok(_) => {}
        Err(_) => return Err(Error::invalid(format!("rules.approval_role: {} is not a role", rules.approval_role))),
    }
    Ok(())
}

/// The longest wait timer: 30 days.
pub const MAX_WAIT_SECONDS: u64 = 30 * 24 * 3600;

/// Why secret `name` may not be used as the registry credentials of
/// `image` in this run, or `None` when it may.
pub fn credentials_refusal(name: &str, scope: &SecretScope, image: &str, run: &RunFacts<'_>) -> Option<String> {
    if let Some(why) = secret_refusal(name, scope, run) {
        return Some(why);
    }
    let host = registry_of(image);
    if scope.registry.is_empty() {
        return Some(format!(
            "secret `{name}` is refused as registry credentials: it is not bound to a registry (set it with \
             `--registry {host}`)"
        ));
    }
    if !scope.registry.eq_ignore_ascii_case(&host) {
        return Some(format!(
            "secret `{name}` is refused as registry credentials for `{image}`: it is bound to registry `{}`, and the \
             image is on `{host}`",
            scope.registry
        ));
    }
    None
}

/// Why a job of this run may not run: the first secret (or registry
/// credential) its run may not have, or a plugin step asking an untrusted
/// run for network access. Checked when the job is planned (to tell at
/// once) and when it would start (with the scopes of then). `scope_of`
/// gives a secret's scope (`None`: not set — that fails at dispatch,
/// naming it). `None`: it may run.
pub fn job_refusal(
    job: &crate::store::records::JobRecord,
    run: &RunFacts<'_>,
    scope_of: impl Fn(&str) -> Result<Option<SecretScope>>,
) -> Result<Option<String>> {
    let facts = RunFacts { environment: job.environment.as_ref().map(|e| e.name.as_str()), ..*run };
    let run = &facts;
    for name in &job.secrets {
        if let Some(scope) = scope_of(name)?
            && let Some(why) = secret_refusal(name, &scope, run)
        {
            return Ok(Some(why));
        }
    }
    if let Some(image) = job.image.as_ref().filter(|i| !i.credentials.is_empty()) {
        if run.trust == Trust::Untrusted {
            return Ok(Some(format!(
                "registry credentials `{}` are refused: untrusted runs get no credentials",
                image.credentials
            )));
        }
        if let Some(scope) = scope_of(&image.credentials)?
            && let Some(why) = credentials_refusal(&image.credentials, &scope, &image.name, run)
        {
            return Ok(Some(why));
        }
    }
    if run.trust == Trust::Untrusted {
        for step in &job.steps {
            if let Some(viaduct_proto::v1::step_plan::Action::Uses(u)) = &step.action
                && u.allow_network
            {
                return Ok(Some(format!(
                    "step {} (`uses: {}`) asks for network access (`allow: network`): untrusted runs get none",
                    step.index, u.plugin
                )));
            }
        }
    }
    Ok(None)
}

/// The registry host of an image reference, as Docker reads it: the first
/// path component when it has a `.` or a `:` or is `localhost`, else
/// Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The stored name of a run's concurrency group: `<repo>/<group>` for
/// runs of a repository, `<repo>/pr/<n>/<group>` for its pull requests, the
/// group as written for runs without a repository (API and stored
/// pipelines, whose callers hold tokens). Repository names have no `/`, so
/// no run can name another repository's (or pull request's) group.
pub fn concurrency_group(source: &RunSource, group: &str) -> String {
    if group.is_empty() || source.repo.is_empty() {
        return group.to_string();
    }
    if source.event == "pull_request" {
        format!("{}/pr/{}/{group}", source.repo, source.pull_request)
    } else {
        format!("{}/{group}", source.repo)
    }
}

fn list(items: &[String]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use viaduct_proto::v1::Role;

    fn pr(fork: bool, sender: &str, association: &str) -> RunSource {
        RunSource {
            event: "pull_request".into(),
            repo: "app".into(),
            pull_request: 7,
            fork,
            head_repo: if fork { "mallory/app".into() } else { "org/app".into() },
            sender: sender.into(),
            sender_association: association.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pull_request_trust_needs_the_repository_and_a_trusted_sender() {
        let member = of_pull_request(None, &pr(false, "alice", "MEMBER"));
        assert_eq!(member, Decision { trust: Trust::Trusted, approval: None });
        // A member's fork runs at once but stays untrusted.
        let fork = of_pull_request(None, &pr(true, "alice", "MEMBER"));
        assert_eq!((fork.trust, fork.approval), (Trust::Untrusted, None));
        let stranger = of_pull_request(None, &pr(true, "mallory", "FIRST_TIME_CONTRIBUTOR"));
        assert_eq!(stranger.trust, Trust::Untrusted);
        assert!(stranger.approval.unwrap().contains("`mallory` from a fork (mallory/app)"));
        // Listed senders are trusted whatever the forge says; no sender is
        // never trusted.
        let policy = PullRequestPolicy { trusted_senders: vec!["Bob".into()], trusted_associations: vec![] };
        assert_eq!(of_pull_request(Some(&policy), &pr(false, "bob", "NONE")).trust, Trust::Trusted);
        assert_eq!(of_pull_request(Some(&policy), &pr(false, "alice", "MEMBER")).trust, Trust::Untrusted);
        assert_eq!(of_pull_request(None, &pr(false, "", "OWNER")).trust, Trust::Untrusted);
    }

    #[test]
    fn secret_scopes() {
        let push = RunSource { event: "push".into(), repo: "app".into(), branch: "main".into(), ..Default::default() };
        let run = RunFacts { source: &push, pipeline: "ci", trust: Trust::Trusted, environment: None };
        assert_eq!(secret_refusal("K", &SecretScope::default(), &run), None);
        let other_repo = SecretScope { repos: vec!["web".into()], ..Default::default() };
        assert!(secret_refusal("K", &other_repo, &run).unwrap().contains("repositories `web` (this run is of `app`)"));
        let release = SecretScope { branches: vec!["release/*".into()], ..Default::default() };
        assert!(secret_refusal("K", &release, &run).unwrap().contains("branches `release/*`"));
        let main = SecretScope { branches: vec!["main".into()], pipelines: vec!["ci".into()], ..Default::default() };
        assert_eq!(secret_refusal("K", &main, &run), None);
        let member_pr = pr(false, "alice", "MEMBER");
        let trusted_pr = RunFacts { source: &member_pr, pipeline: "ci", trust: Trust::Trusted, environment: None };
        assert!(secret_refusal("K", &SecretScope::default(), &trusted_pr).unwrap().contains("pull requests"));
        let for_prs = SecretScope { pull_requests: true, ..Default::default() };
        assert_eq!(secret_refusal("K", &for_prs, &trusted_pr), None);
        let untrusted = RunFacts { trust: Trust::Untrusted, ..trusted_pr };
        assert!(secret_refusal("K", &for_prs, &untrusted).unwrap().contains("untrusted"));
        // A forge token: the server may use it for the run; no job gets it.
        let server = SecretScope { repos: vec!["app".into()], server_only: true, ..Default::default() };
        assert!(secret_refusal("K", &server, &run).unwrap().contains("for the server only"));
        assert!(credentials_refusal("K", &server, "busybox", &run).unwrap().contains("for the server only"));
    }

    #[test]
    fn environment_secrets_go_only_to_jobs_deploying_there() {
        let push = RunSource { event: "push".into(), repo: "app".into(), branch: "main".into(), ..Default::default() };
        let scope =
            SecretScope { repos: vec!["app".into()], environments: vec!["production".into()], ..Default::default() };
        let deploying =
            RunFacts { source: &push, pipeline: "ci", trust: Trust::Trusted, environment: Some("production") };
        assert_eq!(secret_refusal("KEY", &scope, &deploying), None);
        let staging = RunFacts { environment: Some("staging"), ..deploying };
        assert!(secret_refusal("KEY", &scope, &staging).unwrap().contains("environments `production`"));
        let none = RunFacts { environment: None, ..deploying };
        assert!(secret_refusal("KEY", &scope, &none).unwrap().contains("deploys to no environment"));
        // An environment scope must name its repositories.
        let loose = SecretScope { environments: vec!["production".into()], ..Default::default() };
        assert!(check_scope(&loose).unwrap_err().to_string().contains("exactly one repository"));
        let two = SecretScope { repos: vec!["app".into(), "web".into()], ..scope.clone() };
        assert!(check_scope(&two).is_err());
        assert!(check_scope(&scope).is_ok());
    }

    #[test]
    fn deployments_follow_the_environment_rules() {
        let rules = EnvironmentRules { branches: vec!["main".into()], tags: vec!["v*".into()], ..Default::default() };
        let on = |branch: &str, tag: &str, event: &str| RunSource {
            event: event.into(),
            repo: "app".into(),
            branch: branch.into(),
            tag: tag.into(),
            ..Default::default()
        };
        fn facts(s: &RunSource) -> RunFacts<'_> {
            RunFacts { source: s, pipeline: "ci", trust: Trust::Trusted, environment: Some("production") }
        }
        assert_eq!(deployment_refusal("production", &rules, &facts(&on("main", "", "push"))), None);
        assert_eq!(deployment_refusal("production", &rules, &facts(&on("", "v1.2", "push"))), None);
        let feature = deployment_refusal("production", &rules, &facts(&on("feature", "", "push"))).unwrap();
        assert!(
            feature.contains("admits branches `main` and tags `v*` (this run is of branch `feature`)"),
            "{feature}"
        );
        // A pull request deploys only where the environment admits them,
        // and an untrusted run never does.
        let pr_run = on("main", "", "pull_request");
        assert!(deployment_refusal("production", &rules, &facts(&pr_run)).unwrap().contains("pull requests"));
        let open = EnvironmentRules { pull_requests: true, ..Default::default() };
        assert_eq!(deployment_refusal("staging", &open, &facts(&pr_run)), None);
        let untrusted = RunFacts { trust: Trust::Untrusted, ..facts(&pr_run) };
        assert!(deployment_refusal("staging", &open, &untrusted).unwrap().contains("never deploys"));
        let no_repo = on("main", "", "api");
        let no_repo = RunSource { repo: String::new(), ..no_repo };
        assert!(deployment_refusal("staging", &open, &facts(&no_repo)).unwrap().contains("only runs of a repository"));
        // Rules are checked before they are stored.
        assert!(check_rules(&EnvironmentRules { approval_role: Role::Read as i32, ..Default::default() }).is_err());
        assert!(check_rules(&EnvironmentRules { prevent_self_approval: true, ..Default::default() }).is_err());
        assert!(check_rules(&EnvironmentRules { wait_seconds: MAX_WAIT_SECONDS + 1, ..Default::default() }).is_err());
        assert!(check_rules(&EnvironmentRules { branches: vec!["[".into()], ..Default::default() }).is_err());
    }

    #[test]
    fn registry_credentials_are_bound_to_a_host() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/org/app@sha256:ab"), "ghcr.io");
        assert_eq!(registry_of("localhost/app"), "localhost");
        let push = RunSource { event: "push".into(), ..Default::default() };
        let run = RunFacts { source: &push, pipeline: "ci", trust: Trust::Trusted, environment: None };
        let bound = SecretScope { registry: "ghcr.io".into(), ..Default::default() };
        assert_eq!(credentials_refusal("R", &bound, "ghcr.io/org/app", &run), None);
        assert!(
            credentials_refusal("R", &bound, "evil.test/app", &run).unwrap().contains("bound to registry `ghcr.io`")
        );
        assert!(credentials_refusal("R", &SecretScope::default(), "ghcr.io/a", &run).unwrap().contains("not bound"));
    }

    #[test]
    fn concurrency_groups_are_namespaced() {
        let push = RunSource { event: "push".into(), repo: "app".into(), ..Default::default() };
        assert_eq!(concurrency_group(&push, "deploy"), "app/deploy");
        assert_eq!(concurrency_group(&pr(true, "m", ""), "deploy"), "app/pr/7/deploy");
        assert_eq!(concurrency_group(&RunSource::default(), "deploy"), "deploy");
    }
}
