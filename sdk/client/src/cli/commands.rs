//! What each `viaduct` command does.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::Path,
    time::Duration,
};

use tokio_stream::StreamExt;
use viaduct_sdk::{
    Client,
    proto::{
        ExecutorWord, StatusWord,
        v1::{
            ApproveRunRequest, CancelRunRequest, CreatePipelineRequest, CreateRegistrationTokenRequest,
            CreateRepoRequest, DeleteSecretRequest, DrainRunnerRequest, FollowRequest, GetPipelineRequest,
            GetRepoRequest, GetRunRequest, GetRunnerRequest, HostedRepo, ListPipelinesRequest, ListReposRequest,
            ListRunnersRequest, ListRunsRequest, ListSecretsRequest, MirrorRepo, PageRequest, PendingJobsRequest,
            PullRequestPolicy, RetentionPolicy, RetryFrom, RetryRunRequest, Run, RunnerExecutors, RunnerLabels,
            SecretScope, SetSecretRequest, Status, SubmitRequest, SyncRepoRequest, TriggerRequest, UpdateRepoRequest,
            UpdateRunnerRequest, WatchRequest, WatchRunnersRequest, create_repo_request, follow_request, log_event,
            run_event::Change, submit_request,
        },
    },
};

use super::{
    Failure,
    args::{
        CancelArgs, PipelinesCommand, ReposCommand, RetryArgs, RunnersCommand, RunsCommand, SecretsCommand, SubmitArgs,
    },
    terminal, view,
};

/// GitHub author associations trusted by default (as the server's default
/// policy).
const DEFAULT_ASSOCIATIONS: &[&str] = &["OWNER", "MEMBER", "COLLABORATOR"];

/// `viaduct validate FILE…`: offline, with the same checks as the server.
pub fn validate(files: &[std::path::PathBuf]) -> Result<(), Failure> {
    let mut bad = false;
    for f in files {
        let text = read(f)?;
        let diags = viaduct_pipeline::check(&f.display().to_string(), &text);
        if diags.is_empty() {
            println!("{}: valid", f.display());
        }
        for d in diags {
            bad = true;
            println!("{d}");
        }
    }
    if bad { Err(Failure::Invalid(String::new())) } else { Ok(()) }
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// `viaduct submit FILE [--follow]`.
pub async fn submit(client: &Client, a: SubmitArgs) -> Result<(), Failure> {
    let yaml = read(&a.file)?;
    let mut request_id = [0u8; 16];
    getrandom::fill(&mut request_id).map_err(|e| Failure::Usage(format!("no randomness: {e}")))?;
    let req = SubmitRequest {
        source: Some(submit_request::Source::PipelineYaml(yaml)),
        file_name: a.file.display().to_string(),
        priority: a.priority,
        inputs: a.inputs.into_iter().collect(),
        request_id: hex::encode(request_id),
        keep_on_failure: a.keep_on_failure,
    };
    // Sent again while the server is unavailable (a restart, a replica
    // failover): the request id makes a second send return the first run.
    let mut wait = std::time::Duration::from_millis(200);
    let id = loop {
        match client.runs().submit(req.clone()).await {
            Ok(r) => break r.into_inner().run_id,
            Err(s) if s.code() == tonic::Code::Unavailable && wait < std::time::Duration::from_secs(10) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(s) => return Err(s.into()),
        }
    };
    if !a.follow {
        println!("{id}");
        return Ok(());
    }
    say!("run {id} submitted");
    follow_outcome(client, &id).await
}

/// Follows a run's logs and turns its outcome into the exit status: says
/// why queued jobs wait while it follows, and why each job that did not
/// succeed ended so at the end.
pub async fn follow_outcome(client: &Client, id: &str) -> Result<(), Failure> {
    let ended = tokio::select! {
        r = print_logs(client, id, true) => r?,
        () = explain_waits(client, id) => None,
    };
    // The stream's last event is the run as it ended (from an older server:
    // asked for).
    let run = match ended {
        Some(run) if run.status().is_terminal() => run,
        _ => client.wait_for_run(id).await?,
    };
    let line = format!("run {} {} in {}", run.id, view::word(run.status), view::duration(run.times.as_ref()));
    if run.status() == Status::Success {
        say!("{line}");
        Ok(())
    } else {
        if !run.error.is_empty() {
            say!("{}", terminal::plain(&run.error));
        }
        for j in run.jobs.iter().filter(|j| j.status() != Status::Success && !j.message.is_empty()) {
            // Some messages start with the status ("skipped: …").
            let (word, message) = (view::word(j.status), terminal::plain(&j.message));
            let line = if message.starts_with(word) { message } else { format!("{word}: {message}") };
            say!("── {}: {line}", terminal::plain(&j.name));
        }
        Err(Failure::RunFailed(line))
    }
}

/// Prints, every 2 s, why each queued job of run `id` still waits (see
/// `Job.waiting`), when that changed. Runs until cancelled.
async fn explain_waits(client: &Client, id: &str) {
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(run) = client.runs().get(GetRunRequest { id: id.to_string() }).await else {
            continue;
        };
        for j in &run.into_inner().jobs {
            if j.status() != Status::Queued || j.waiting.is_empty() || said.get(&j.id) == Some(&j.waiting) {
                continue;
            }
            say!("── {}: queued: {}", terminal::plain(&j.name), terminal::plain(&j.waiting));
            said.insert(j.id.clone(), j.waiting.clone());
        }
    }
}

/// Streams the logs of a run, job or step to stdout (step headers to
/// stderr). Survives a server restart: it reconnects and skips what it
/// already printed. Returns a followed run as it ended, when the server
/// sent it.
pub async fn print_logs(client: &Client, id: &str, follow: bool) -> Result<Option<Run>, Failure> {
    let scope = match id.matches('.').count() {
        0 => follow_request::Scope::RunId(id.to_string()),
        1 => follow_request::Scope::JobId(id.to_string()),
        _ => follow_request::Scope::StepId(id.to_string()),
    };
    let mut printed: HashMap<(String, u32), u64> = HashMap::new();
    let mut finished: HashSet<(String, u32)> = HashSet::new();
    let mut current: Option<(String, u32)> = None;
    let mut names: HashMap<(String, u32), String> = HashMap::new();
    let mut failures = 0;
    let mut stdout = std::io::stdout().lock();
    // To a terminal, a log keeps its colours but no other escape sequence
    // (see `terminal`); to a file or a pipe, its exact bytes.
    let to_terminal = std::io::IsTerminal::is_terminal(&stdout);
    let mut filters: HashMap<(String, u32), terminal::LogFilter> = HashMap::new();
    loop {
        let mut from_offsets = HashMap::new();
        for ((step, _), off) in &printed {
            let e = from_offsets.entry(step.clone()).or_insert(*off);
            *e = (*e).min(*off);
        }
        let req = FollowRequest { scope: Some(scope.clone()), from_offsets, no_follow: !follow, ..Default::default() };
        let mut stream = match client.logs().follow(req).await {
            Ok(s) => s.into_inner(),
            Err(s) if retryable(&s) && failures < 30 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        loop {
            match stream.next().await {
                None => return Ok(None),
                Some(Err(s)) if retryable(&s) && failures < 30 => {
                    failures += 1;
                    say!("(connection to the server lost: {}; reconnecting)", viaduct_sdk::status_line(&s));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Some(Err(s)) => return Err(s.into()),
                Some(Ok(ev)) => match ev.event {
                    Some(log_event::Event::Step(b)) => {
                        let key = (b.step_id.clone(), b.attempt);
                        let retry = if b.attempt > 1 { format!(" (attempt {})", b.attempt) } else { String::new() };
                        let name =
                            format!("{} › {}{retry}", terminal::plain(&b.job_name), terminal::plain(&b.step_name));
                        names.insert(key.clone(), name);
                        if b.finished && finished.insert(key.clone()) {
                            let code = b.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
                            let why = if b.message.is_empty() || b.status() == Status::Success {
                                String::new()
                            } else {
                                format!(" — {}", terminal::plain(&b.message))
                            };
                            let _ = stdout.flush();
                            say!("── {}: {}{code}{why}", names[&key], view::word(b.status));
                        }
                    }
                    Some(log_event::Event::Chunk(c)) => {
                        let key = (c.step_id.clone(), c.attempt);
                        let done = printed.entry(key.clone()).or_insert(0);
                        let end = c.offset + c.data.len() as u64;
                        if end <= *done {
                            continue;
                        }
                        let skip = usize::try_from(done.saturating_sub(c.offset)).unwrap_or(0);
                        if current.as_ref() != Some(&key) {
                            let _ = stdout.flush();
                            say!("── {}", names.get(&key).cloned().unwrap_or_else(|| c.step_id.clone()));
                            current = Some(key.clone());
                        }
                        let data = &c.data[skip..];
                        let written = if to_terminal {
                            stdout.write_all(&filters.entry(key.clone()).or_default().feed(data))
                        } else {
                            stdout.write_all(data)
                        };
                        written.map_err(|e| Failure::Usage(format!("cannot write: {e}")))?;
                        stdout.flush().map_err(|e| Failure::Usage(format!("cannot write: {e}")))?;
                        *done = end;
                    }
                    // The stream's last event: the run is over once it is
                    // here (its end durable), whether or not the stream's
                    // own end has arrived yet.
                    Some(log_event::Event::Ended(run)) => return Ok(Some(run)),
                    None => {}
                },
            }
        }
    }
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled)
}

/// `viaduct runs …`.
pub async fn runs(client: &Client, cmd: RunsCommand) -> Result<(), Failure> {
    match cmd {
        RunsCommand::List { statuses, pipeline, branch, limit, page_token, json } => {
            let statuses = statuses
                .iter()
                .map(|s| {
                    Status::from_word(s).map(|s| s as i32).ok_or_else(|| {
                        Failure::Usage(format!("unknown status `{s}` (queued, running, success, failure, cancelled, timed_out, skipped, runner_lost)"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let req = ListRunsRequest {
                statuses,
                pipeline: pipeline.unwrap_or_default(),
                branch: branch.unwrap_or_default(),
                page: Some(PageRequest { page_size: limit, page_token: page_token.unwrap_or_default() }),
                ..Default::default()
            };
            let resp = client.runs().list(req).await?.into_inner();
            if json {
                let runs: Vec<_> = resp.runs.iter().map(view::run_json).collect();
                println!("{}", serde_json::json!({ "runs": runs, "next_page_token": resp.next_page_token }));
            } else {
                let rows: Vec<Vec<String>> = resp
                    .runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            view::word(r.status).to_string(),
                            r.pipeline.clone(),
                            r.source.as_ref().map(|s| s.event.clone()).unwrap_or_default(),
                            view::local(r.times.as_ref().and_then(|t| t.created_at.as_ref())),
                            view::duration(r.times.as_ref()),
                        ]
                    })
                    .collect();
                print!("{}", view::table(&["ID", "STATUS", "PIPELINE", "EVENT", "CREATED", "DURATION"], &rows));
                if !resp.next_page_token.is_empty() {
                    say!("more: --page-token {}", resp.next_page_token);
                }
            }
            Ok(())
        }
        RunsCommand::Get { id, json } => {
            let run = client.runs().get(GetRunRequest { id }).await?.into_inner();
            print_run(&run, json);
            Ok(())
        }
        RunsCommand::Cancel(a) => cancel(client, a).await,
        RunsCommand::Retry(a) => retry(client, a).await,
        RunsCommand::Approve { id } => {
            let run = client.runs().approve(ApproveRunRequest { id: id.clone() }).await?.into_inner();
            let by = run.approval.map(|a| a.reason).unwrap_or_default();
            println!("run {id} approved ({by}); it gets no secrets");
            Ok(())
        }
    }
}

fn print_run(run: &Run, json: bool) {
    if json {
        println!("{}", view::run_json(run));
    } else {
        print!("{}", view::run_text(run));
    }
}

/// `viaduct cancel ID [--job JOB]`.
pub async fn cancel(client: &Client, a: CancelArgs) -> Result<(), Failure> {
    let req = CancelRunRequest { id: a.id, job_id: a.job.unwrap_or_default() };
    let run = client.runs().cancel(req).await?.into_inner();
    println!("run {} {}", run.id, view::word(run.status));
    Ok(())
}

/// `viaduct retry ID [--from-failed | --from STEP] [--job JOB] [--follow]`.
pub async fn retry(client: &Client, a: RetryArgs) -> Result<(), Failure> {
    let from = (a.from_failed || a.from.is_some())
        .then(|| RetryFrom { job: a.job.clone().unwrap_or_default(), step: a.from.unwrap_or(0) });
    let req = RetryRunRequest { id: a.id.clone(), from, keep_on_failure: a.keep_on_failure };
    let run = client.runs().retry(req).await?.into_inner();
    for job in &run.jobs {
        let restored: Vec<u32> = job.steps.iter().filter(|s| s.restored_from > 0).map(|s| s.index).collect();
        if let (Some(last), Some(s)) = (restored.last(), job.steps.iter().find(|s| s.restored_from > 0)) {
            println!(
                "job {} resumes at step {} (steps 1–{last} restored from attempt {})",
                job.name,
                last + 1,
                s.restored_from
            );
        }
    }
    if a.follow {
        return follow_outcome(client, &a.id).await;
    }
    println!("run {} {}", run.id, view::word(run.status));
    Ok(())
}

/// `viaduct watch`.
pub async fn watch(client: &Client, run: Option<String>, after: u64, json: bool) -> Result<(), Failure> {
    let req = WatchRequest { after_cursor: after, run_id: run.unwrap_or_default(), from_start: false };
    let mut stream = client.runs().watch(req).await?.into_inner();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        let (kind, id, status, name) = match &ev.change {
            Some(Change::Run(r)) => ("run", r.id.clone(), r.status, r.pipeline.clone()),
            Some(Change::Job(j)) => ("job", j.id.clone(), j.status, j.name.clone()),
            Some(Change::Step(s)) => ("step", s.id.clone(), s.status, s.name.clone()),
            None => continue,
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"cursor": ev.cursor, "kind": kind, "id": id, "status": view::word(status), "name": name})
            );
        } else {
            println!("{:>8}  {kind:<4}  {id:<12}  {:<11}  {name}", ev.cursor, view::word(status));
        }
    }
    Ok(())
}

/// `viaduct runners …`.
pub async fn runners(client: &Client, cmd: RunnersCommand) -> Result<(), Failure> {
    match cmd {
        RunnersCommand::List { json } => {
            let list = client.runners().list(ListRunnersRequest {}).await?.into_inner().runners;
            if json {
                let v: Vec<_> = list.iter().map(view::runner_json).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        let state = r.state_word();
                        vec![
                            r.id.clone(),
                            r.name.clone(),
                            if r.protected { format!("{state}, protected") } else { state.to_string() },
                            r.labels.join(","),
                            format!("{}/{}", r.jobs.len(), r.slots),
                            view::local(r.last_seen.as_ref()),
                        ]
                    })
                    .collect();
                print!("{}", view::table(&["ID", "NAME", "STATE", "LABELS", "JOBS", "LAST SEEN"], &rows));
            }
            Ok(())
        }
        RunnersCommand::Get { id, json } => {
            let r = client.runners().get(GetRunnerRequest { id }).await?.into_inner();
            if json {
                println!("{}", view::runner_json(&r));
            } else {
                print!("{}", view::runner_text(&r));
            }
            Ok(())
        }
        RunnersCommand::Pending => {
            let p =
                client.runners().pending(PendingJobsRequest { limit: 1000, ..Default::default() }).await?.into_inner();
            let rows: Vec<Vec<String>> = p
                .jobs
                .iter()
                .map(|j| {
                    let mut needs = vec![j.executor().word().to_string()];
                    if j.plugins {
                        needs.push("wasi".into());
                    }
                    if j.untrusted {
                        needs.push("unprotected".into());
                    }
                    vec![
                        j.job_id.clone(),
                        j.pipeline.clone(),
                        j.runs_on.join(","),
                        needs.join(","),
                        if j.bound_runner.is_empty() { "-".into() } else { j.bound_runner.clone() },
                    ]
                })
                .collect();
            print!("{}", view::table(&["JOB", "PIPELINE", "RUNS ON", "NEEDS", "RUNNER MADE FOR IT"], &rows));
            if p.total as usize > p.jobs.len() {
                println!("… and {} more", p.total as usize - p.jobs.len());
            }
            Ok(())
        }
        RunnersCommand::Watch { json } => {
            let mut events = client.runners().watch(WatchRunnersRequest {}).await?.into_inner();
            while let Some(e) = events.message().await? {
                let kind = e.kind().as_str_name().trim_start_matches("RUNNER_EVENT_KIND_").to_lowercase();
                let r = e.runner.unwrap_or_default();
                if json {
                    let mut v = view::runner_json(&r);
                    v["event"] = kind.into();
                    v["time"] = view::rfc3339(e.time.as_ref());
                    println!("{v}");
                } else if kind == "synced" {
                    println!("{}  -- live from here --", view::local(e.time.as_ref()));
                } else {
                    let why = if r.paused.is_empty() { String::new() } else { format!("  ({})", r.paused) };
                    let line =
                        format!("{}  {kind:<12} {}  {}{why}", view::local(e.time.as_ref()), r.id, r.state_word());
                    println!("{}", super::terminal::plain(&line));
                }
            }
            Ok(())
        }
        RunnersCommand::Drain { id, undo } => {
            let r = client.runners().drain(DrainRunnerRequest { id, drain: !undo }).await?.into_inner();
            println!("runner {} {}", r.id, r.state_word());
            Ok(())
        }
        RunnersCommand::Update { id, labels, slots, executors, protected, unprotected } => {
            let req = UpdateRunnerRequest {
                id,
                labels: labels.map(|labels| RunnerLabels { labels }),
                slots,
                executors: executors.map(|e| RunnerExecutors { executors: e.into_iter().map(|e| e as i32).collect() }),
                protected: (protected || unprotected).then_some(protected),
            };
            let r = client.runners().update(req).await?.into_inner();
            println!("{}", view::runner_json(&r));
            Ok(())
        }
        RunnersCommand::Remove { id } => {
            client.runners().remove(GetRunnerRequest { id: id.clone() }).await?;
            println!("runner {id} removed");
            Ok(())
        }
        RunnersCommand::Token { reusable, job } => {
            let req =
                CreateRegistrationTokenRequest { reusable, job_id: job.unwrap_or_default(), ..Default::default() };
            let t = client.runners().create_registration_token(req).await?;
            println!("{}", t.into_inner().token);
            Ok(())
        }
    }
}

/// `viaduct pipelines …`.
pub async fn pipelines(client: &Client, cmd: PipelinesCommand) -> Result<(), Failure> {
    match cmd {
        PipelinesCommand::List => {
            let list = client.pipelines().list(ListPipelinesRequest::default()).await?.into_inner().pipelines;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.jobs.join(","),
                        view::local(p.times.as_ref().and_then(|t| t.finished_at.as_ref())),
                    ]
                })
                .collect();
            print!("{}", view::table(&["NAME", "JOBS", "UPDATED"], &rows));
            Ok(())
        }
        PipelinesCommand::Get { name } => {
            print!("{}", client.pipelines().get(GetPipelineRequest { name }).await?.into_inner().yaml);
            Ok(())
        }
        PipelinesCommand::Create { name, file, update, policy } => {
            let req = CreatePipelineRequest { name, yaml: read(&file)?, retention: policy.policy() };
            let p = if update { client.pipelines().update(req).await? } else { client.pipelines().create(req).await? };
            println!("pipeline {} stored ({} jobs)", p.get_ref().name, p.get_ref().jobs.len());
            Ok(())
        }
        PipelinesCommand::Delete { name } => {
            client.pipelines().delete(GetPipelineRequest { name: name.clone() }).await?;
            println!("pipeline {name} deleted");
            Ok(())
        }
        PipelinesCommand::Trigger { name, inputs, follow } => {
            let req = TriggerRequest { pipeline: name, inputs: inputs.into_iter().collect(), ..Default::default() };
            let id = client.runs().trigger(req).await?.into_inner().run_id;
            if follow {
                say!("run {id} started");
                return follow_outcome(client, &id).await;
            }
            println!("{id}");
            Ok(())
        }
    }
}

/// `viaduct trigger --repo …`.
pub async fn trigger(
    client: &Client,
    repo: String,
    git_ref: Option<String>,
    commit: Option<String>,
    inputs: Vec<(String, String)>,
    follow: bool,
) -> Result<(), Failure> {
    let req = TriggerRequest {
        repo,
        r#ref: git_ref.unwrap_or_default(),
        commit: commit.unwrap_or_default(),
        inputs: inputs.into_iter().collect(),
        ..Default::default()
    };
    let id = client.runs().trigger(req).await?.into_inner().run_id;
    if follow {
        say!("run {id} started");
        return follow_outcome(client, &id).await;
    }
    println!("{id}");
    Ok(())
}

/// `viaduct repos …`.
pub async fn repos(client: &Client, cmd: ReposCommand) -> Result<(), Failure> {
    match cmd {
        ReposCommand::Create {
            name,
            mirror,
            poll,
            webhook_secret,
            credentials,
            default_branch,
            trust_senders,
            forge,
        } => {
            let forge = forge.connection();
            if mirror.is_none() && forge.is_some() {
                return Err(Failure::Usage("--forge needs --mirror: only mirrors report to a forge".into()));
            }
            let source = match mirror {
                Some(url) => create_repo_request::Source::Mirror(MirrorRepo {
                    url,
                    poll_interval_seconds: poll,
                    webhook_secret: webhook_secret.unwrap_or_default(),
                    credentials: credentials.unwrap_or_default(),
                    pull_requests: (!trust_senders.is_empty()).then(|| PullRequestPolicy {
                        trusted_senders: trust_senders,
                        trusted_associations: DEFAULT_ASSOCIATIONS.iter().map(|s| s.to_string()).collect(),
                    }),
                    forge,
                }),
                None => create_repo_request::Source::Hosted(HostedRepo { default_branch }),
            };
            let r = client.repos().create(CreateRepoRequest { name, source: Some(source) }).await?.into_inner();
            print!("{}", view::repo_text(&r));
            Ok(())
        }
        ReposCommand::List { json } => {
            let list = client.repos().list(ListReposRequest {}).await?.into_inner().repos;
            if json {
                println!("{}", serde_json::Value::Array(list.iter().map(view::repo_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        let from = if r.kind == "mirror" { r.url.clone() } else { r.clone_url.clone() };
                        vec![r.name.clone(), r.kind.clone(), r.default_branch.clone(), from, r.last_error.clone()]
                    })
                    .collect();
                print!("{}", view::table(&["NAME", "KIND", "DEFAULT", "URL", "LAST ERROR"], &rows));
            }
            Ok(())
        }
        ReposCommand::Get { name, json } => {
            let r = client.repos().get(GetRepoRequest { name }).await?.into_inner();
            if json {
                println!("{}", view::repo_json(&r));
            } else {
                print!("{}", view::repo_text(&r));
            }
            Ok(())
        }
        ReposCommand::Delete { name } => {
            client.repos().delete(GetRepoRequest { name: name.clone() }).await?;
            println!("repository {name} deleted");
            Ok(())
        }
        ReposCommand::Trust { name, senders, associations } => {
            let associations = if associations.is_empty() {
                DEFAULT_ASSOCIATIONS.iter().map(|s| s.to_string()).collect()
            } else {
                associations.into_iter().filter(|a| !a.eq_ignore_ascii_case("none")).collect()
            };
            let policy = PullRequestPolicy { trusted_senders: senders, trusted_associations: associations };
            let r = client
                .repos()
                .update(UpdateRepoRequest { name, pull_requests: Some(policy), ..Default::default() })
                .await?
                .into_inner();
            print!("{}", view::repo_text(&r));
            Ok(())
        }
        ReposCommand::Retention { name, policy, defaults } => {
            let retention = if defaults { Some(RetentionPolicy::default()) } else { policy.policy() };
            let r = match retention {
                None => client.repos().get(GetRepoRequest { name }).await?.into_inner(),
                Some(p) => client
                    .repos()
                    .update(UpdateRepoRequest { name, retention: Some(p), ..Default::default() })
                    .await?
                    .into_inner(),
            };
            println!("{}", super::admin::policy_text(&r.retention.unwrap_or_default()));
            Ok(())
        }
        ReposCommand::Forge { name, forge, remove } => {
            let forge = match (forge.connection(), remove) {
                (_, true) => viaduct_sdk::proto::v1::ForgeConnection::default(),
                (Some(f), false) => f,
                (None, false) => return Err(Failure::Usage("give --forge KIND (and its flags), or --remove".into())),
            };
            let r = client
                .repos()
                .update(UpdateRepoRequest { name, forge: Some(forge), ..Default::default() })
                .await?
                .into_inner();
            print!("{}", view::repo_text(&r));
            Ok(())
        }
        ReposCommand::Sync { name } => {
            let o = client.repos().sync(SyncRepoRequest { name, ..Default::default() }).await?.into_inner();
            println!(
                "{} ref(s) moved; runs started: {}",
                o.refs_changed,
                if o.run_ids.is_empty() { "none".into() } else { o.run_ids.join(", ") }
            );
            Ok(())
        }
    }
}

/// `viaduct secrets …`.
pub async fn secrets(client: &Client, cmd: SecretsCommand) -> Result<(), Failure> {
    match cmd {
        SecretsCommand::Set {
            name,
            value,
            repos,
            pipelines,
            branches,
            pull_requests,
            registry,
            server_only,
            environments,
        } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)
                        .map_err(|e| Failure::Usage(format!("cannot read the value from stdin: {e}")))?;
                    v.strip_suffix('\n').map(str::to_string).unwrap_or(v)
                }
            };
            let scope = SecretScope {
                repos,
                pipelines,
                branches,
                pull_requests,
                registry: registry.unwrap_or_default(),
                server_only,
                environments,
            };
            let info = client.secrets().set(SetSecretRequest { name: name.clone(), value, scope: Some(scope) }).await?;
            println!("secret {name} set ({})", view::scope_text(info.into_inner().scope.as_ref()));
            Ok(())
        }
        SecretsCommand::List => {
            let list = client.secrets().list(ListSecretsRequest {}).await?.into_inner().secrets;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        view::local(s.times.as_ref().and_then(|t| t.finished_at.as_ref())),
                        view::scope_text(s.scope.as_ref()),
                    ]
                })
                .collect();
            print!("{}", view::table(&["NAME", "UPDATED", "SCOPE"], &rows));
            Ok(())
        }
        SecretsCommand::Delete { name } => {
            client.secrets().delete(DeleteSecretRequest { name: name.clone() }).await?;
            println!("secret {name} deleted");
            Ok(())
        }
    }
}
