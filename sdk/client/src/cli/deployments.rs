//! `viaduct environments`, `viaduct deployments`, `viaduct deploy` and
//! `viaduct services`: deployment targets, the record of what went where,
//! promotion and rollback, and the health of deployed services.

use clap::Subcommand;
use serde_json::json;
use viaduct_sdk::{
    Client,
    proto::{
        RoleWord as _,
        v1::{
            DeployedService, Deployment, DeploymentState, Environment, EnvironmentRules, GetDeploymentRequest,
            GetEnvironmentRequest, GetServiceRequest, Health, ListDeploymentsRequest, ListEnvironmentsRequest,
            ListServicesRequest, PromoteRequest, PutEnvironmentRequest, ReviewDeploymentRequest, Role, RollbackRequest,
        },
    },
};

use super::{Failure, args::key_value, commands::follow_outcome, view};

/// `viaduct environments …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum EnvironmentsCommand {
    /// Create or replace an environment of a repository, with its rules and
    /// variables (what is not given is not kept: give the whole).
    Put {
        /// The repository.
        repo: String,
        /// Its name, e.g. `staging`, `production`.
        name: String,
        /// Branches (globs) whose runs may deploy (repeatable; none and no
        /// --tag: any).
        #[arg(long = "branch", value_name = "GLOB")]
        branches: Vec<String>,
        /// Tags (globs) whose runs may deploy (repeatable).
        #[arg(long = "tag", value_name = "GLOB")]
        tags: Vec<String>,
        /// Runs of trusted pull requests may deploy.
        #[arg(long)]
        pull_requests: bool,
        /// Each deployment waits for approval by someone with this role on
        /// the repository (trigger, push, maintain, admin).
        #[arg(long, value_name = "ROLE", value_parser = approval_role)]
        approval: Option<Role>,
        /// Who started the run cannot approve its deployment.
        #[arg(long, requires = "approval")]
        prevent_self_approval: bool,
        /// Wait this long after approval before deploying (e.g. 10m).
        #[arg(long, value_name = "DURATION", value_parser = seconds)]
        wait: Option<u64>,
        /// A new deployment cancels the one in progress (default: it waits).
        #[arg(long)]
        cancel_in_progress: bool,
        /// A host (glob) the server may probe for this environment's
        /// services, e.g. `*.internal` (repeatable; none: nothing probed).
        #[arg(long = "probe-host", value_name = "GLOB")]
        probe_hosts: Vec<String>,
        /// A stored pipeline a service's `on_change` may start (repeatable).
        #[arg(long = "on-change-pipeline", value_name = "NAME")]
        on_change_pipelines: Vec<String>,
        /// A variable deploying jobs get, NAME=VALUE (repeatable).
        #[arg(long = "var", value_parser = key_value)]
        variables: Vec<(String, String)>,
        /// Where it can be seen.
        #[arg(long)]
        url: Option<String>,
        /// What it is.
        #[arg(long)]
        description: Option<String>,
    },
    /// A repository's environments and what each runs.
    List {
        /// The repository.
        repo: String,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// One environment: its rules, variables, current and open deployments.
    Get {
        /// The repository.
        repo: String,
        /// The environment.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an environment (its deployment history stays).
    Delete {
        /// The repository.
        repo: String,
        /// The environment.
        name: String,
    },
}

/// `viaduct deployments …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum DeploymentsCommand {
    /// Deployments of a repository, newest first.
    List {
        /// The repository.
        repo: String,
        /// Only this environment.
        #[arg(long)]
        environment: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// One deployment.
    Get {
        /// Its id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a deployment that waits for approval: by id, or a job's
    /// (RUN.JOB).
    Approve {
        /// A deployment id, or a job id (42.1).
        target: String,
        /// Said with it.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject it: its job fails.
    Reject {
        /// A deployment id, or a job id (42.1).
        target: String,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
    },
}

/// `viaduct deploy …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum DeployCommand {
    /// Deploy to TO exactly what FROM runs (the same commit, steps, plugin
    /// digests and artifacts), as a new run under TO's rules.
    Promote {
        /// The environment whose current deployment is promoted.
        from: String,
        /// The environment it goes to.
        to: String,
        /// The repository.
        #[arg(long)]
        repo: String,
        /// Stream the logs and exit with the run's outcome.
        #[arg(short, long)]
        follow: bool,
    },
    /// Deploy again what ENVIRONMENT ran before its current deployment (or
    /// --to a given one), as a new run under its rules.
    Rollback {
        /// The environment.
        environment: String,
        /// The repository.
        #[arg(long)]
        repo: String,
        /// This earlier deployment instead.
        #[arg(long)]
        to: Option<u64>,
        /// Stream the logs and exit with the run's outcome.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `viaduct services …`.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ServicesCommand {
    /// The services of a repository with their health.
    List {
        /// The repository.
        repo: String,
        /// Only this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// One service with its recent probes.
    Get {
        /// The repository.
        repo: String,
        /// The environment.
        environment: String,
        /// The service.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop probing a service and forget it.
    Delete {
        /// The repository.
        repo: String,
        /// The environment.
        environment: String,
        /// The service.
        name: String,
    },
}

fn approval_role(s: &str) -> Result<Role, String> {
    match Role::from_word(s) {
        Some(Role::Read) | None => Err(format!("`{s}` cannot approve: one of trigger, push, maintain, admin")),
        Some(r) => Ok(r),
    }
}

fn seconds(s: &str) -> Result<u64, String> {
    viaduct_pipeline::duration::parse_duration(s).map(|d| d.as_secs())
}

/// A deployment state as a word.
pub fn state_word(state: i32) -> &'static str {
    match DeploymentState::try_from(state) {
        Ok(DeploymentState::Waiting) => "waiting",
        Ok(DeploymentState::Queued) => "queued",
        Ok(DeploymentState::InProgress) => "in_progress",
        Ok(DeploymentState::Success) => "success",
        Ok(DeploymentState::Failure) => "failure",
        Ok(DeploymentState::Cancelled) => "cancelled",
        Ok(DeploymentState::Refused) => "refused",
        _ => "unknown",
    }
}

fn health_word(h: i32) -> &'static str {
    match Health::try_from(h) {
        Ok(Health::Up) => "up",
        Ok(Health::Down) => "down",
        _ => "unknown",
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn deployment_json(d: &Deployment) -> serde_json::Value {
    json!({
        "id": d.id, "repo": d.repo, "environment": d.environment, "state": state_word(d.state),
        "message": d.message, "run_id": d.run_id, "job_id": d.job_id, "job_name": d.job_name,
        "attempt": d.attempt, "ref": d.r#ref, "commit": d.commit, "kind": d.kind,
        "source_deployment": d.source_deployment, "triggered_by": d.triggered_by, "approved_by": d.approved_by,
        "created_at": view::rfc3339(d.times.as_ref().and_then(|t| t.created_at.as_ref())),
        "started_at": view::rfc3339(d.times.as_ref().and_then(|t| t.started_at.as_ref())),
        "finished_at": view::rfc3339(d.times.as_ref().and_then(|t| t.finished_at.as_ref())),
        "url": d.url, "outputs": d.outputs, "services": d.services,
    })
}

fn deployment_row(d: &Deployment) -> Vec<String> {
    vec![
        d.id.to_string(),
        d.environment.clone(),
        state_word(d.state).to_string(),
        d.kind.clone(),
        short(&d.commit).to_string(),
        d.job_id.clone(),
        d.triggered_by.clone(),
        d.approved_by.clone(),
        view::local(d.times.as_ref().and_then(|t| t.created_at.as_ref())),
        d.message.clone(),
    ]
}

const DEPLOYMENT_HEADER: [&str; 10] =
    ["ID", "ENVIRONMENT", "STATE", "KIND", "COMMIT", "JOB", "BY", "APPROVED BY", "CREATED", "MESSAGE"];

fn rules_text(r: Option<&EnvironmentRules>) -> String {
    let Some(r) = r else { return "none".into() };
    let mut out = Vec::new();
    if !r.branches.is_empty() {
        out.push(format!("branches {}", r.branches.join(",")));
    }
    if !r.tags.is_empty() {
        out.push(format!("tags {}", r.tags.join(",")));
    }
    if r.pull_requests {
        out.push("trusted pull requests".into());
    }
    match Role::try_from(r.approval_role) {
        Ok(Role::Unspecified) | Err(_) => {}
        Ok(role) => {
            out.push(format!("approval by {}{}", role.word(), if r.prevent_self_approval { " (not self)" } else { "" }))
        }
    }
    if r.wait_seconds > 0 {
        out.push(format!("wait {}s", r.wait_seconds));
    }
    out.push(if r.cancel_in_progress { "cancel in progress".into() } else { "one at a time".into() });
    if !r.probe_hosts.is_empty() {
        out.push(format!("probes to {}", r.probe_hosts.join(",")));
    }
    if !r.on_change_pipelines.is_empty() {
        out.push(format!("on health change {}", r.on_change_pipelines.join(",")));
    }
    out.join("; ")
}

fn environment_json(e: &Environment) -> serde_json::Value {
    json!({
        "repo": e.repo, "name": e.name, "url": e.url, "description": e.description,
        "rules": rules_text(e.rules.as_ref()), "variables": e.variables,
        "current": e.current.as_ref().map(deployment_json),
        "open": e.open.iter().map(deployment_json).collect::<Vec<_>>(),
    })
}

/// `viaduct environments …`.
pub async fn environments(client: &Client, cmd: EnvironmentsCommand) -> Result<(), Failure> {
    match cmd {
        EnvironmentsCommand::Put {
            repo,
            name,
            branches,
            tags,
            pull_requests,
            approval,
            prevent_self_approval,
            wait,
            cancel_in_progress,
            probe_hosts,
            on_change_pipelines,
            variables,
            url,
            description,
        } => {
            let rules = EnvironmentRules {
                branches,
                tags,
                pull_requests,
                approval_role: approval.map_or(0, |r| r as i32),
                prevent_self_approval,
                wait_seconds: wait.unwrap_or(0),
                cancel_in_progress,
                probe_hosts,
                on_change_pipelines,
            };
            let req = PutEnvironmentRequest {
                repo,
                name,
                rules: Some(rules),
                variables: variables.into_iter().collect(),
                url: url.unwrap_or_default(),
                description: description.unwrap_or_default(),
            };
            let e = client.environments().put(req).await?.into_inner();
            println!("environment {} of {} saved ({})", e.name, e.repo, rules_text(e.rules.as_ref()));
            Ok(())
        }
        EnvironmentsCommand::List { repo, json } => {
            let list = client.environments().list(ListEnvironmentsRequest { repo }).await?.into_inner().environments;
            if json {
                for e in &list {
                    println!("{}", environment_json(e));
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    let (commit, state, when, by) = match &e.current {
                        Some(d) => (
                            short(&d.commit).to_string(),
                            format!("deployment {} ({})", d.id, d.kind),
                            view::local(d.times.as_ref().and_then(|t| t.finished_at.as_ref())),
                            d.triggered_by.clone(),
                        ),
                        None => ("-".into(), "nothing deployed".into(), String::new(), String::new()),
                    };
                    let open = match e.open.len() {
                        0 => String::new(),
                        n => format!(
                            "{n} ({})",
                            e.open.iter().map(|d| state_word(d.state)).collect::<Vec<_>>().join(",")
                        ),
                    };
                    vec![e.name.clone(), commit, state, when, by, open, rules_text(e.rules.as_ref())]
                })
                .collect();
            print!("{}", view::table(&["ENVIRONMENT", "COMMIT", "CURRENT", "SINCE", "BY", "OPEN", "RULES"], &rows));
            Ok(())
        }
        EnvironmentsCommand::Get { repo, name, json } => {
            let e = client.environments().get(GetEnvironmentRequest { repo, name }).await?.into_inner();
            if json {
                println!("{}", environment_json(&e));
                return Ok(());
            }
            println!("environment {} of {}", e.name, e.repo);
            if !e.description.is_empty() {
                println!("  {}", e.description);
            }
            if !e.url.is_empty() {
                println!("  url: {}", e.url);
            }
            println!("  rules: {}", rules_text(e.rules.as_ref()));
            let mut vars: Vec<_> = e.variables.iter().collect();
            vars.sort();
            for (k, v) in vars {
                println!("  var {k}={v}");
            }
            match &e.current {
                Some(d) => {
                    println!("  current: deployment {} of {} ({}, job {})", d.id, short(&d.commit), d.kind, d.job_id)
                }
                None => println!("  current: nothing deployed"),
            }
            if !e.open.is_empty() {
                let rows: Vec<Vec<String>> = e.open.iter().map(deployment_row).collect();
                print!("{}", view::table(&DEPLOYMENT_HEADER, &rows));
            }
            Ok(())
        }
        EnvironmentsCommand::Delete { repo, name } => {
            client.environments().delete(GetEnvironmentRequest { repo: repo.clone(), name: name.clone() }).await?;
            println!("environment {name} of {repo} deleted");
            Ok(())
        }
    }
}

/// A review's target: a deployment id, or a job id.
fn review(target: &str, comment: String) -> ReviewDeploymentRequest {
    match target.parse::<u64>() {
        Ok(id) => ReviewDeploymentRequest { id, comment, ..Default::default() },
        Err(_) => ReviewDeploymentRequest { job: target.to_string(), comment, ..Default::default() },
    }
}

/// `viaduct deployments …`.
pub async fn deployments(client: &Client, cmd: DeploymentsCommand) -> Result<(), Failure> {
    match cmd {
        DeploymentsCommand::List { repo, environment, limit, json } => {
            let req = ListDeploymentsRequest { repo, environment: environment.unwrap_or_default(), limit };
            let list = client.deployments().list(req).await?.into_inner().deployments;
            if json {
                for d in &list {
                    println!("{}", deployment_json(d));
                }
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(deployment_row).collect();
                print!("{}", view::table(&DEPLOYMENT_HEADER, &rows));
            }
            Ok(())
        }
        DeploymentsCommand::Get { id, json } => {
            let d = client.deployments().get(GetDeploymentRequest { id }).await?.into_inner();
            if json {
                println!("{}", deployment_json(&d));
            } else {
                print!("{}", view::table(&DEPLOYMENT_HEADER, &[deployment_row(&d)]));
                let mut outputs: Vec<_> = d.outputs.iter().collect();
                outputs.sort();
                for (k, v) in outputs {
                    println!("  output {k}={v}");
                }
            }
            Ok(())
        }
        DeploymentsCommand::Approve { target, comment } => {
            let d = client.deployments().approve(review(&target, comment)).await?.into_inner();
            println!("deployment {} to {} approved ({})", d.id, d.environment, state_word(d.state));
            Ok(())
        }
        DeploymentsCommand::Reject { target, comment } => {
            let d = client.deployments().reject(review(&target, comment)).await?.into_inner();
            println!("deployment {} to {} rejected", d.id, d.environment);
            Ok(())
        }
    }
}

/// `viaduct deploy …`.
pub async fn deploy(client: &Client, cmd: DeployCommand) -> Result<(), Failure> {
    let (answer, follow) = match cmd {
        DeployCommand::Promote { from, to, repo, follow } => {
            (client.deployments().promote(PromoteRequest { repo, from, to }).await?.into_inner(), follow)
        }
        DeployCommand::Rollback { environment, repo, to, follow } => {
            let req = RollbackRequest { repo, environment, to_deployment: to.unwrap_or(0) };
            (client.deployments().rollback(req).await?.into_inner(), follow)
        }
    };
    let source = answer.source.unwrap_or_default();
    eprintln!(
        "run {} deploys again deployment {} ({} of {}, from {})",
        answer.run_id,
        source.id,
        short(&source.commit),
        source.repo,
        source.environment
    );
    if follow {
        return follow_outcome(client, &answer.run_id).await;
    }
    println!("{}", answer.run_id);
    Ok(())
}

fn service_row(s: &DeployedService) -> Vec<String> {
    vec![
        s.environment.clone(),
        s.name.clone(),
        health_word(s.health).to_string(),
        view::local(s.health_since.as_ref()),
        s.version.clone(),
        s.deployment.to_string(),
        s.probe.as_ref().map(|p| p.target.clone()).unwrap_or_default(),
        s.endpoints.join(" "),
    ]
}

fn service_json(s: &DeployedService) -> serde_json::Value {
    json!({
        "repo": s.repo, "environment": s.environment, "name": s.name, "health": health_word(s.health),
        "health_since": view::rfc3339(s.health_since.as_ref()), "commit": s.commit, "deployment": s.deployment,
        "endpoints": s.endpoints, "probe": s.probe.as_ref().map(|p| p.target.clone()),
        "history": s.history.iter().map(|p| json!({
            "time": view::rfc3339(p.time.as_ref()), "health": health_word(p.health), "status": p.status,
            "latency_ms": p.latency_ms, "error": p.error,
        })).collect::<Vec<_>>(),
    })
}

const SERVICE_HEADER: [&str; 8] =
    ["ENVIRONMENT", "SERVICE", "HEALTH", "SINCE", "VERSION", "DEPLOYMENT", "PROBE", "ENDPOINTS"];

/// `viaduct services …`.
pub async fn services(client: &Client, cmd: ServicesCommand) -> Result<(), Failure> {
    match cmd {
        ServicesCommand::List { repo, environment, json } => {
            let req = ListServicesRequest { repo, environment: environment.unwrap_or_default() };
            let list = client.services().list(req).await?.into_inner().services;
            if json {
                for s in &list {
                    println!("{}", service_json(s));
                }
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(service_row).collect();
                print!("{}", view::table(&SERVICE_HEADER, &rows));
            }
            Ok(())
        }
        ServicesCommand::Get { repo, environment, name, json } => {
            let s = client.services().get(GetServiceRequest { repo, environment, name }).await?.into_inner();
            if json {
                println!("{}", service_json(&s));
                return Ok(());
            }
            print!("{}", view::table(&SERVICE_HEADER, &[service_row(&s)]));
            let rows: Vec<Vec<String>> = s
                .history
                .iter()
                .map(|p| {
                    vec![
                        view::local(p.time.as_ref()),
                        health_word(p.health).to_string(),
                        if p.status == 0 { String::new() } else { p.status.to_string() },
                        format!("{} ms", p.latency_ms),
                        p.error.clone(),
                    ]
                })
                .collect();
            print!("{}", view::table(&["PROBED", "HEALTH", "STATUS", "LATENCY", "ERROR"], &rows));
            Ok(())
        }
        ServicesCommand::Delete { repo, environment, name } => {
            let req = GetServiceRequest { repo, environment: environment.clone(), name: name.clone() };
            client.services().delete(req).await?;
            println!("service {name} of {environment} forgotten");
            Ok(())
        }
    }
}
