//! Decoding a loaded YAML document into the typed [`Pipeline`], with all
//! plan-independent validation.

use std::collections::BTreeMap;

use crate::cron::CronSchedule;
use crate::dag::check_needs;
use crate::decode::{Decoder, Fields, is_secret_name};
use crate::diag::{Diagnostic, Pos, sort_diagnostics};
use crate::glob::Glob;
use crate::keys;
use crate::node::{Kind, Node, Source};
use crate::plan::{MAX_DEPLOYED_SERVICES, MAX_EMAIL_LEN, MAX_NOTIFY, MAX_NOTIFY_EMAILS};
use crate::scope::{Level, Scope};
use crate::spec::*;
use crate::yaml::{is_empty_document, load};

/// Parses and validates a pipeline file.
///
/// `file` is only used in diagnostics. On failure, every problem found is
/// returned, sorted by position.
pub fn parse(file: &str, text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    let (docs, mut diags) = load(file, text)?;
    let src = Source::new(text);
    let mut d = Decoder::new(file);
    let pipeline = match docs.first() {
        Some(root) if !is_empty_document(root) => {
            for extra in docs.iter().skip(1).filter(|doc| !is_empty_document(doc)) {
                d.error(
                    Node::new(extra, &src).pos(),
                    "expected a single YAML document; remove this second document (after `---`)",
                );
            }
            Some(decode_pipeline(&mut d, file, Node::new(root, &src)))
        }
        _ => {
            d.error(Pos::START, "the pipeline file is empty; expected a mapping with a `jobs` key");
            None
        }
    };
    diags.extend(d.diags);
    sort_diagnostics(&mut diags);
    match pipeline {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(diags),
    }
}

/// Parses and validates a pipeline file, returning only the diagnostics
/// (empty when the file is valid).
pub fn validate(file: &str, text: &str) -> Vec<Diagnostic> {
    parse(file, text).err().unwrap_or_default()
}

/// Everything wrong with a file that can be found without a trigger:
/// [`validate`], plus what only planning finds (matrix expansion,
/// interpolation of job-level fields). Required inputs are not checked:
/// they depend on the trigger. The server's `Pipelines.Validate` and the
/// CLI's `viaduct validate` both use this.
pub fn check(file: &str, text: &str) -> Vec<Diagnostic> {
    let pipeline = match parse(file, text) {
        Ok(p) => p,
        Err(diags) => return diags,
    };
    let ctx = crate::plan::PlanContext { event: "validate".to_owned(), ..Default::default() };
    crate::plan::plan(&pipeline, &ctx).err().unwrap_or_default()
}

fn decode_pipeline(d: &mut Decoder<'_>, file: &str, node: Node<'_>) -> Pipeline {
    let mut p = Pipeline {
        file: file.to_owned(),
        name: "pipeline".to_owned(),
        triggers: Triggers { manual: Some(ManualTrigger::default()), ..Triggers::default() },
        env: BTreeMap::new(),
        priority: 5,
        concurrency: None,
        notify: Vec::new(),
        snapshots: None,
        jobs: Vec::new(),
    };
    if node.entries().is_none() {
        d.error(
            node.pos(),
            format!("expected a mapping with a `jobs` key at the top level, found {}", node.describe()),
        );
        return p;
    }
    let Some(f) = d.fields(node, &keys::PIPELINE, "pipeline", "at the top level", None) else {
        return p;
    };
    let scope = Scope::pipeline();
    if let Some(name) = f.get("name").and_then(|n| d.template(n, "name", &scope)) {
        p.name = name;
    }
    if let Some(on) = f.get("on") {
        p.triggers = triggers(d, on);
    }
    if let Some(env) = f.get("env") {
        p.env = d.env(env, "env", &scope);
    }
    if let Some(priority) = f.get("priority").and_then(|n| priority(d, n)) {
        p.priority = priority;
    }
    p.concurrency = f.get("concurrency").and_then(|n| concurrency(d, n, f.key_pos("concurrency"), &scope));
    p.notify = f.get("notify").map(|n| notify_list(d, n, "of the pipeline")).unwrap_or_default();
    p.snapshots = f.get("snapshots").and_then(|n| d.expect_bool(n, "snapshots"));
    if let Some(jobs_node) = f.get("jobs") {
        p.jobs = jobs(d, jobs_node);
        check_needs(d, &p.jobs);
    }
    p
}

fn priority(d: &mut Decoder<'_>, node: Node<'_>) -> Option<u8> {
    d.int_in(node, "priority", 0, 10).and_then(|i| u8::try_from(i).ok())
}

fn triggers(d: &mut Decoder<'_>, node: Node<'_>) -> Triggers {
    let mut t = Triggers::default();
    let Some(f) = d.fields(node, &keys::ON, "on", "in `on`", None) else {
        return t;
    };
    if let Some(n) = f.get("push") {
        t.push = d
            .fields(n, &keys::PUSH, "push", "in `on.push`", None)
            .map(|pf| PushTrigger { branches: globs(d, &pf, "branches"), tags: globs(d, &pf, "tags") });
    }
    if let Some(n) = f.get("pull_request") {
        t.pull_request = d
            .fields(n, &keys::PULL_REQUEST, "pull_request", "in `on.pull_request`", None)
            .map(|pf| PullRequestTrigger { branches: globs(d, &pf, "branches") });
    }
    if let Some(n) = f.get("schedule") {
        for entry in d.str_list(n, "schedule", true).unwrap_or_default() {
            match CronSchedule::parse(&entry.value) {
                Ok(schedule) => t.schedule.push(CronSpec { schedule, pos: entry.pos }),
                Err(e) => d.error(entry.pos, e),
            }
        }
    }
    if let Some(n) = f.get("manual") {
        t.manual = match n.kind() {
            Kind::Bool(false) => None,
            Kind::Bool(true) => Some(ManualTrigger::default()),
            _ => d
                .fields(n, &keys::MANUAL, "manual", "in `on.manual`", None)
                .map(|mf| ManualTrigger { inputs: mf.get("inputs").map(|i| inputs(d, i)).unwrap_or_default() }),
        };
    }
    t
}

fn globs(d: &mut Decoder<'_>, f: &Fields<'_>, key: &str) -> Option<Vec<Glob>> {
    let list = d.str_list(f.get(key)?, key, true)?;
    Some(list.into_iter().filter_map(|p| Glob::new(&p.value).map_err(|e| d.error(p.pos, e)).ok()).collect())
}

fn inputs(d: &mut Decoder<'_>, node: Node<'_>) -> Vec<InputSpec> {
    let mut out = Vec::new();
    for (name, value) in d.named_entries(node, "inputs").unwrap_or_default() {
        d.check_identifier(&name, "input name");
        let context = format!("in input `{}`", name.value);
        let Some(f) = d.fields(value, &keys::INPUT, &name.value, &context, None) else {
            continue;
        };
        out.push(InputSpec {
            default: f.get("default").and_then(|n| d.expect_scalar(n, "default")),
            description: f.get("description").and_then(|n| d.expect_str(n, "description")),
            required: f.get("required").and_then(|n| d.expect_bool(n, "required")).unwrap_or(false),
            name: name.value,
            pos: name.pos,
        });
    }
    out
}

fn concurrency(d: &mut Decoder<'_>, node: Node<'_>, at: Option<Pos>, scope: &Scope<'_>) -> Option<Concurrency> {
    if node.as_str().is_some() {
        return d.template(node, "concurrency", scope).map(|group| Concurrency { group, cancel_in_progress: false });
    }
    let f = d.fields(node, &keys::CONCURRENCY, "concurrency", "in `concurrency`", at)?;
    Some(Concurrency {
        group: f.get("group").and_then(|n| d.template(n, "group", scope))?,
        cancel_in_progress: f
            .get("cancel_in_progress")
            .and_then(|n| d.expect_bool(n, "cancel_in_progress"))
            .unwrap_or(false),
    })
}

fn jobs(d: &mut Decoder<'_>, node: Node<'_>) -> Vec<Job> {
    let Some(entries) = d.named_entries(node, "jobs") else {
        return Vec::new();
    };
    if entries.is_empty() {
        d.error(node.pos(), "`jobs` must define at least one job");
    }
    entries
        .into_iter()
        .filter_map(|(key, value)| {
            d.check_identifier(&key, "job key");
            job(d, key, value)
        })
        .collect()
}

fn job(d: &mut Decoder<'_>, key: Spanned<String>, node: Node<'_>) -> Option<Job> {
    let context = format!("in job `{}`", key.value);
    let f = d.fields(node, &keys::JOB, &key.value, &context, Some(key.pos))?;
    let matrix = f.get("matrix").zip(f.key_pos("matrix")).and_then(|(n, at)| matrix(d, n, at, &key.value));
    let matrix_keys = matrix.as_ref().map(Matrix::keys);
    let needs = f.get("needs").and_then(|n| d.str_list(n, "needs", true)).unwrap_or_default();
    let need_names: Vec<String> = needs.iter().map(|n| n.value.clone()).collect();
    let scope = Scope {
        level: Level::Job,
        job: &key.value,
        matrix: matrix_keys.as_deref(),
        needs: &need_names,
        steps_before: &[],
        steps_all: &[],
    };
    let bool_or =
        |d: &mut Decoder<'_>, k: &str, default: bool| f.get(k).and_then(|n| d.expect_bool(n, k)).unwrap_or(default);
    let runs_on = templated_list(d, f.get("runs_on"), "runs_on", &scope, false);
    let artifacts = templated_list(d, f.get("artifacts"), "artifacts", &scope, true);
    if let Some(node) = f.get("artifacts").filter(|_| artifacts.len() > crate::plan::MAX_ARTIFACT_PATTERNS) {
        d.error(
            node.pos(),
            format!("{} artifact patterns; the limit is {}", artifacts.len(), crate::plan::MAX_ARTIFACT_PATTERNS),
        );
    }
    let secrets: Vec<String> = f
        .get("secrets")
        .and_then(|n| d.str_list(n, "secrets", true))
        .unwrap_or_default()
        .into_iter()
        .filter(|s| d.check_secret_name(s))
        .map(|s| s.value)
        .collect();
    let steps: Vec<Step> = f.get("steps").map(|n| steps(d, n, &scope)).unwrap_or_default();
    for s in steps.iter().flat_map(|s| &s.allowed_secrets) {
        if !secrets.contains(&s.value) {
            d.error(s.pos, format!("`allow.secrets` names `{}`, which is not among the job's `secrets`", s.value));
        }
    }
    Some(Job {
        name: f.get("name").and_then(|n| d.template(n, "name", &scope)),
        runs_on,
        image: f.get("image").and_then(|n| image(d, n, f.key_pos("image"), &scope, &context)),
        services: f.get("services").map(|n| services(d, n, &scope, &key.value)).unwrap_or_default(),
        network: f.get("network").and_then(|n| d.word(n, "network", &["bridge", "none"])).map_or(
            Network::Bridge,
            |w| {
                if w == "none" { Network::None } else { Network::Bridge }
            },
        ),
        resources: f.get("resources").map(|n| resources(d, n, &context)).unwrap_or_default(),
        fail_fast: bool_or(d, "fail_fast", true),
        timeout: f.get("timeout").and_then(|n| d.duration(n, "timeout")),
        retries: f
            .get("retries")
            .and_then(|n| d.int_in(n, "retries", 0, 10))
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0),
        priority: f.get("priority").and_then(|n| priority(d, n)),
        env: f.get("env").map(|n| d.env(n, "env", &scope)).unwrap_or_default(),
        secrets,
        condition: f.get("if").and_then(|n| d.condition(n, &scope)),
        continue_on_error: bool_or(d, "continue_on_error", false),
        artifacts,
        notify: f.get("notify").map(|n| notify_list(d, n, &format!("of job `{}`", key.value))).unwrap_or_default(),
        snapshots: f.get("snapshots").and_then(|n| d.expect_bool(n, "snapshots")),
        environment: f.get("environment").and_then(|n| environment(d, n, &scope, &context)),
        artifacts_from: f
            .get("artifacts_from")
            .and_then(|n| d.str_list(n, "artifacts_from", true))
            .unwrap_or_default()
            .into_iter()
            .filter(|a| {
                let known = need_names.contains(&a.value);
                if !known {
                    d.error(
                        a.pos,
                        format!(
                            "`artifacts_from` names `{}`, which is not in the job's `needs` ({})",
                            a.value,
                            if need_names.is_empty() { "none".to_owned() } else { need_names.join(", ") }
                        ),
                    );
                }
                known
            })
            .collect(),
        steps,
        matrix,
        needs,
        key: key.value,
        pos: key.pos,
    })
}

/// A `notify:` list (`owner` completes messages: "of the pipeline", "of job
/// `x`"). Every value is a plain string: channels name secrets, and neither
/// names nor addresses may contain `${{ }}`.
fn notify_list(d: &mut Decoder<'_>, node: Node<'_>, owner: &str) -> Vec<Notify> {
    if node.is_null() {
        return Vec::new();
    }
    let Some(items) = node.items() else {
        d.mismatch(node, "a list of notifications", "notify");
        return Vec::new();
    };
    if items.len() > MAX_NOTIFY {
        d.error(node.pos(), format!("{} notifications {owner}; the limit is {MAX_NOTIFY}", items.len()));
    }
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        out.extend(notify(d, item, &format!("in notification {} {owner}", i + 1)));
    }
    out
}

/// One `notify:` entry: exactly one channel, and `on`.
fn notify(d: &mut Decoder<'_>, node: Node<'_>, context: &str) -> Option<Notify> {
    let f = d.fields(node, &keys::NOTIFY, "notification", context, None)?;
    let mut channels: Vec<Option<Channel>> = Vec::new();
    if let Some(n) = f.get("webhook") {
        channels.push(webhook(d, n, context));
    }
    if let Some(n) = f.get("slack") {
        channels.push(d.secret_name(n, "slack").map(|url_secret| Channel::Slack { url_secret }));
    }
    if let Some(n) = f.get("matrix") {
        channels.push(d.secret_name(n, "matrix").map(|url_secret| Channel::Matrix { url_secret }));
    }
    if let Some(n) = f.get("email") {
        channels.push(emails(d, n).map(|to| Channel::Email { to }));
    }
    let on = match f.get("on") {
        Some(n) => notify_on(d, n)?,
        None => vec![NotifyOn::Failure, NotifyOn::Fixed],
    };
    // Two channels or none were reported by `fields` (`exactly_one_of`).
    let channel = if channels.len() == 1 { channels.pop().flatten()? } else { return None };
    Some(Notify { on, channel, pos: node.pos() })
}

/// `webhook:`: a secret name (the URL's), or `{ url, secret }`.
fn webhook(d: &mut Decoder<'_>, node: Node<'_>, context: &str) -> Option<Channel> {
    if node.as_str().is_some() {
        return d.secret_name(node, "webhook").map(|url_secret| Channel::Webhook { url_secret, key_secret: None });
    }
    if node.entries().is_none() {
        d.mismatch(node, "a secret name or a mapping with `url` and `secret`", "webhook");
        return None;
    }
    let f = d.fields(node, &keys::WEBHOOK, "webhook", &format!("in `webhook` {context}"), None)?;
    let key_secret = f.get("secret").map(|n| d.secret_name(n, "secret"));
    let url_secret = f.get("url").and_then(|n| d.secret_name(n, "url"));
    let key_secret = match key_secret {
        Some(key) => Some(key?),
        None => None,
    };
    Some(Channel::Webhook { url_secret: url_secret?, key_secret })
}

/// `email:`: one address or a list of 1 to [`MAX_NOTIFY_EMAILS`].
fn emails(d: &mut Decoder<'_>, node: Node<'_>) -> Option<Vec<String>> {
    let list = d.str_list(node, "email", true)?;
    let mut ok = true;
    if list.is_empty() {
        d.error(node.pos(), "`email` lists no address");
        ok = false;
    }
    if list.len() > MAX_NOTIFY_EMAILS {
        d.error(node.pos(), format!("{} email addresses; the limit is {MAX_NOTIFY_EMAILS}", list.len()));
        ok = false;
    }
    for addr in &list {
        if let Some(problem) = email_problem(&addr.value) {
            d.error(addr.pos, problem);
            ok = false;
        }
    }
    ok.then(|| list.into_iter().map(|a| a.value).collect())
}

/// What is wrong with an email address, if anything: one `@` between a
/// non-empty local part and domain, no whitespace or control characters, none
/// of `<>,;"`, at most [`MAX_EMAIL_LEN`] characters, no `${{ }}`.
fn email_problem(addr: &str) -> Option<String> {
    let len = addr.chars().count();
    if len > MAX_EMAIL_LEN {
        return Some(format!("an email address of {len} characters; the limit is {MAX_EMAIL_LEN}"));
    }
    let problem = if addr.contains("${{") {
        "`${{ }}` is not allowed here: write the address itself"
    } else if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it must not contain spaces or control characters"
    } else if addr.contains(['<', '>', ',', ';', '"']) {
        "it must not contain `<`, `>`, `,`, `;` or `\"` (one plain address per entry)"
    } else {
        match addr.split_once('@') {
            Some((_, domain)) if domain.contains('@') => "expected exactly one `@`",
            None => "expected exactly one `@`",
            Some(("", _)) => "nothing before the `@`",
            Some((_, "")) => "no domain after the `@`",
            Some(_) => return None,
        }
    };
    Some(format!("invalid email address `{}`: {problem}", addr.escape_debug()))
}

/// `on:` of a notification: one outcome or a list (duplicates dropped).
fn notify_on(d: &mut Decoder<'_>, node: Node<'_>) -> Option<Vec<NotifyOn>> {
    let items = if node.as_str().is_some() {
        vec![node]
    } else if let Some(items) = node.items() {
        items
    } else {
        let expected = format!("an outcome or a list of outcomes ({})", keys::NOTIFY_ON_WORDS.join(", "));
        d.mismatch(node, &expected, "on");
        return None;
    };
    if items.is_empty() {
        d.error(node.pos(), format!("`on` lists no outcome (expected some of: {})", keys::NOTIFY_ON_WORDS.join(", ")));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match d.word(item, "on", keys::NOTIFY_ON_WORDS).and_then(NotifyOn::from_word) {
            Some(o) if !out.contains(&o) => out.push(o),
            Some(_) => {}
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A string-or-list field whose entries may contain `${{ }}`; with `paths`,
/// entries must be relative paths without `..`.
fn templated_list(
    d: &mut Decoder<'_>,
    node: Option<Node<'_>>,
    what: &str,
    scope: &Scope<'_>,
    paths: bool,
) -> Vec<String> {
    let Some(node) = node else {
        return Vec::new();
    };
    let list = d.str_list(node, what, true).unwrap_or_default();
    let items = node.items().unwrap_or_else(|| vec![node]);
    list.into_iter()
        .map(|entry| {
            let item = items.iter().find(|n| n.pos() == entry.pos).copied().unwrap_or(node);
            d.check_template(item, &entry.value, what, scope);
            if paths {
                d.relative_path(item, &entry.value, what);
            }
            entry.value
        })
        .collect()
}

/// `environment:`: a name, or `{ name, url, services }`.
fn environment(d: &mut Decoder<'_>, node: Node<'_>, scope: &Scope<'_>, context: &str) -> Option<EnvironmentSpec> {
    let pos = node.pos();
    if node.entries().is_none() {
        let name = d.template(node, "environment", scope)?;
        return Some(EnvironmentSpec { name, url: None, services: Vec::new(), pos });
    }
    let f = d.fields(node, &keys::ENVIRONMENT, "environment", &format!("in `environment` {context}"), None)?;
    let url = f.get("url").and_then(|n| d.template(n, "url", scope));
    let mut services = Vec::new();
    if let Some(list) = f.get("services") {
        match list.items() {
            Some(items) => {
                if items.len() > MAX_DEPLOYED_SERVICES {
                    d.error(list.pos(), format!("{} services; the limit is {MAX_DEPLOYED_SERVICES}", items.len()));
                }
                for (i, item) in items.into_iter().enumerate() {
                    let context = format!("in service {} of `environment` {context}", i + 1);
                    services.extend(deployed_service(d, item, scope, &context));
                }
            }
            None => d.mismatch(list, "a list of services", "services"),
        }
    }
    Some(EnvironmentSpec { name: f.get("name").and_then(|n| d.template(n, "name", scope))?, url, services, pos })
}

/// One `environment.services[]` entry.
fn deployed_service(d: &mut Decoder<'_>, node: Node<'_>, scope: &Scope<'_>, context: &str) -> Option<DeployedService> {
    let f = d.fields(node, &keys::DEPLOYED_SERVICE, "service", context, None)?;
    let probe = match f.get("probe") {
        Some(n) => {
            let p = d.fields(n, &keys::PROBE, "probe", &format!("in `probe` {context}"), None)?;
            Some(ProbeSpec {
                target: p.get("target").and_then(|n| d.template(n, "target", scope))?,
                interval: p.get("interval").and_then(|n| d.duration(n, "interval")),
                timeout: p.get("timeout").and_then(|n| d.duration(n, "timeout")),
            })
        }
        None => None,
    };
    Some(DeployedService {
        name: f.get("name").and_then(|n| d.template(n, "name", scope))?,
        endpoints: f
            .get("endpoints")
            .and_then(|n| d.str_list(n, "endpoints", true))
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.value)
            .collect(),
        probe,
        on_change: f.get("on_change").and_then(|n| d.expect_str(n, "on_change")),
    })
}

fn image(d: &mut Decoder<'_>, node: Node<'_>, at: Option<Pos>, scope: &Scope<'_>, context: &str) -> Option<ImageSpec> {
    if node.as_str().is_some() {
        return d.template(node, "image", scope).map(|name| ImageSpec {
            name,
            pull: PullPolicy::IfNotPresent,
            user: None,
            credentials: None,
        });
    }
    let f = d.fields(node, &keys::IMAGE, "image", &format!("in `image` {context}"), at)?;
    let pull = match f.get("pull").and_then(|n| d.word(n, "pull", &["if_not_present", "always", "never"])) {
        Some("always") => PullPolicy::Always,
        Some("never") => PullPolicy::Never,
        _ => PullPolicy::IfNotPresent,
    };
    let credentials = f.get("credentials").and_then(|n| {
        let name = d.expect_str(n, "credentials")?;
        if !is_secret_name(&name) {
            d.error(n.pos(), format!("`credentials` must name a secret (letters, digits, `_`), found `{name}`"));
        }
        Some(name)
    });
    Some(ImageSpec {
        credentials,
        user: f.get("user").and_then(|n| d.expect_scalar(n, "user")),
        name: f.get("name").and_then(|n| d.template(n, "name", scope))?,
        pull,
    })
}

fn services(d: &mut Decoder<'_>, node: Node<'_>, scope: &Scope<'_>, job: &str) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for (name, value) in d.named_entries(node, "services").unwrap_or_default() {
        d.check_identifier(&name, "service name");
        let context = format!("in service `{}` of job `{job}`", name.value);
        let Some(f) = d.fields(value, &keys::SERVICE, &name.value, &context, Some(name.pos)) else {
            continue;
        };
        let env = f.get("env").map(|n| d.env(n, "env", scope)).unwrap_or_default();
        let command = f
            .get("command")
            .and_then(|n| d.str_list(n, "command", true))
            .map(|words| words.into_iter().map(|w| w.value).collect())
            .unwrap_or_default();
        if let Some(image) = f.get("image").and_then(|n| image(d, n, f.key_pos("image"), scope, &context)) {
            out.push(ServiceSpec { name: name.value, image, env, command });
        }
    }
    out
}

fn resources(d: &mut Decoder<'_>, node: Node<'_>, context: &str) -> Resources {
    let Some(f) = d.fields(node, &keys::RESOURCES, "resources", &format!("in `resources` {context}"), None) else {
        return Resources::default();
    };
    let cpus = f.get("cpus").and_then(|n| {
        let value = match n.kind() {
            Kind::Int(i) => i as f64,
            Kind::Float(x) => x,
            _ => {
                d.mismatch(n, "a positive number", "cpus");
                return None;
            }
        };
        if value > 0.0 && value.is_finite() {
            Some(value)
        } else {
            d.error(n.pos(), format!("`cpus` must be a positive number, found {value}"));
            None
        }
    });
    Resources { cpus, memory: f.get("memory").and_then(|n| d.memory(n, "memory")) }
}

fn matrix(d: &mut Decoder<'_>, node: Node<'_>, at: Pos, job: &str) -> Option<Matrix> {
    let context = format!("in the matrix of job `{job}`");
    let f = d.fields(node, &keys::MATRIX, "matrix", &context, Some(at))?;
    let mut axes = Vec::new();
    for (axis, values) in f.extra() {
        d.check_identifier(&axis, "matrix axis name");
        let Some(items) = values.items() else {
            d.mismatch(values, "a list of values", &axis.value);
            continue;
        };
        if items.is_empty() {
            d.error(values.pos(), format!("matrix axis `{}` has no values", axis.value));
            continue;
        }
        let values = items.into_iter().filter_map(|v| d.expect_scalar(v, &axis.value)).collect();
        axes.push((axis.value, values));
    }
    let axis_names: Vec<&str> = axes.iter().map(|(k, _): &(String, Vec<String>)| k.as_str()).collect();
    let include = combos(d, f.get("include"), "include", None);
    let exclude = combos(d, f.get("exclude"), "exclude", Some((&axis_names, job)));
    let m = Matrix { axes, include, exclude, pos: at };
    if let Err(e) = m.expand() {
        d.error(at, format!("{e} (job `{job}`)"));
    }
    Some(m)
}

/// `include` / `exclude` entries; with `axes`, every key must be an axis.
fn combos(
    d: &mut Decoder<'_>,
    node: Option<Node<'_>>,
    what: &str,
    axes: Option<(&[&str], &str)>,
) -> Vec<Vec<(String, String)>> {
    let Some(node) = node else {
        return Vec::new();
    };
    let Some(items) = node.items() else {
        d.mismatch(node, "a list of mappings", what);
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        if item.entries().is_none() {
            d.mismatch(item, "a mapping of matrix values", what);
            continue;
        }
        let mut entry = Vec::new();
        for (k, v) in d.named_entries(item, what).unwrap_or_default() {
            if let Some((axes, job)) = axes {
                if !axes.contains(&k.value.as_str()) {
                    d.error(
                        k.pos,
                        format!(
                            "`{}` in `exclude` is not a matrix axis of job `{job}`{} (axes: {})",
                            k.value,
                            crate::diag::suggestion(&k.value, axes.iter().copied()),
                            axes.join(", ")
                        ),
                    );
                    continue;
                }
            } else {
                d.check_identifier(&k, "matrix key");
            }
            if let Some(value) = d.expect_scalar(v, &k.value) {
                entry.push((k.value, value));
            }
        }
        out.push(entry);
    }
    out
}

fn steps(d: &mut Decoder<'_>, node: Node<'_>, job_scope: &Scope<'_>) -> Vec<Step> {
    let job = job_scope.job;
    let Some(items) = node.items() else {
        if node.is_null() {
            d.error(node.pos(), format!("job `{job}` has no steps; add at least one step under `steps`"));
        } else {
            d.mismatch(node, "a list of steps", "steps");
        }
        return Vec::new();
    };
    if items.is_empty() {
        d.error(node.pos(), format!("job `{job}` has no steps; add at least one step under `steps`"));
    }
    if items.len() > crate::plan::MAX_STEPS {
        d.error(node.pos(), format!("job `{job}` has {} steps; the limit is {}", items.len(), crate::plan::MAX_STEPS));
        return Vec::new();
    }
    // Step ids first, so that references to later steps get a precise message.
    let mut ids: Vec<String> = Vec::new();
    let mut first_use: Vec<Pos> = Vec::new();
    let mut id_per_step: Vec<Option<String>> = Vec::new();
    for item in &items {
        let id = item
            .entries()
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k.as_str() == Some("id"))
            .and_then(|(_, v)| v.as_str().map(|s| (s.to_owned(), v.pos())));
        match id {
            Some((id, pos)) => {
                if let Some(i) = ids.iter().position(|x| *x == id) {
                    d.error(pos, format!("duplicate step id `{id}` in job `{job}` (first used at {})", first_use[i]));
                } else {
                    ids.push(id.clone());
                    first_use.push(pos);
                }
                id_per_step.push(Some(id));
            }
            None => id_per_step.push(None),
        }
    }
    let mut before: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let scope = Scope { level: Level::Step, steps_before: &before, steps_all: &ids, ..*job_scope };
        if let Some(step) = step(d, item, i, &scope) {
            out.push(step);
        }
        if let Some(Some(id)) = id_per_step.get(i) {
            before.push(id.clone());
        }
    }
    out
}

fn step(d: &mut Decoder<'_>, node: Node<'_>, index: usize, scope: &Scope<'_>) -> Option<Step> {
    let context = format!("in step {} of job `{}`", index + 1, scope.job);
    let f = d.fields(node, &keys::STEP, "step", &context, None)?;
    let id = f.get("id").and_then(|n| {
        let id = d.expect_str(n, "id")?;
        d.check_identifier(&Spanned { value: id.clone(), pos: n.pos() }, "step id").then_some(id)
    });
    let run = f.get("run").and_then(|n| d.template(n, "run", scope));
    let uses = f
        .get("uses")
        .and_then(|n| Some((d.expect_str(n, "uses")?, n)))
        .and_then(|(s, n)| plugin_ref(&s).map_err(|e| d.error(n.pos(), e)).ok());
    let is_plugin = f.get("uses").is_some();
    for key in ["with", "allow"] {
        if let (Some(pos), false) = (f.key_pos(key), is_plugin) {
            d.error(pos, format!("`{key}` is only valid for plugin steps (with `uses`)"));
        }
    }
    let with_entries = f.get("with").and_then(|n| d.named_entries(n, "with")).unwrap_or_default();
    let with_pos = with_entries.iter().map(|(k, _)| (k.value.clone(), k.pos)).collect();
    let with = with_entries.into_iter().filter_map(|(k, v)| Some((k.value, d.json(v, "with", scope, 0)?))).collect();
    let action_pos = f.get("uses").or_else(|| f.get("run")).map_or(node.pos(), |n| n.pos());
    let allow = f.get("allow").and_then(|n| d.fields(n, &keys::ALLOW, "allow", &format!("in `allow` {context}"), None));
    let allow_network =
        allow.as_ref().and_then(|af| af.get("network").and_then(|n| d.expect_bool(n, "network"))).unwrap_or(false);
    let allowed_secrets = allow
        .as_ref()
        .and_then(|af| af.get("secrets"))
        .and_then(|n| d.str_list(n, "secrets", true))
        .unwrap_or_default()
        .into_iter()
        .filter(|s| d.check_secret_name(s))
        .collect();
    let working_directory = f.get("working_directory").and_then(|n| {
        let dir = d.template(n, "working_directory", scope)?;
        d.relative_path(n, &dir, "working_directory").then_some(dir)
    });
    let reuse_key_files = f
        .get("reuse")
        .and_then(|n| d.fields(n, &keys::REUSE, "reuse", &format!("in `reuse` {context}"), None))
        .map(|rf| templated_list(d, rf.get("key_files"), "key_files", scope, true))
        .unwrap_or_default();
    if let Some(pos) = f.key_pos("reuse").filter(|_| reuse_key_files.len() > crate::plan::MAX_ARTIFACT_PATTERNS) {
        d.error(pos, format!("`key_files` lists at most {} paths", crate::plan::MAX_ARTIFACT_PATTERNS));
    }
    let step = Step {
        pos: node.pos(),
        reuse_key_files,
        allowed_secrets,
        name: f.get("name").and_then(|n| d.template(n, "name", scope)),
        id,
        action: StepAction::Run { script: String::new() },
        env: f.get("env").map(|n| d.env(n, "env", scope)).unwrap_or_default(),
        timeout: f.get("timeout").and_then(|n| d.duration(n, "timeout")),
        continue_on_error: f
            .get("continue_on_error")
            .and_then(|n| d.expect_bool(n, "continue_on_error"))
            .unwrap_or(false),
        condition: f.get("if").and_then(|n| d.condition(n, scope)),
        working_directory,
        action_pos,
        with_pos,
    };
    let action = match (run, uses) {
        (Some(script), None) if !is_plugin => StepAction::Run { script },
        (None, Some((plugin, version))) => StepAction::Uses { plugin, version, with, allow_network },
        _ => return None,
    };
    Some(Step { action, ..step })
}

/// Splits `name@version` (version `1`, `1.2`, `1.2.3`, or absent = newest).
fn plugin_ref(s: &str) -> Result<(String, String), String> {
    let (name, version) = s.split_once('@').unwrap_or((s, ""));
    let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let parts: Vec<&str> = version.split('.').collect();
    let version_ok = (s.contains('@') || version.is_empty())
        && (version.is_empty()
            || (parts.len() <= 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))));
    if name_ok && version_ok && !(s.contains('@') && version.is_empty()) {
        Ok((name.to_owned(), version.to_owned()))
    } else {
        Err(format!(
            "invalid plugin reference `{s}`: expected NAME@MAJOR[.MINOR[.PATCH]] such as cache@1, or NAME for the newest version"
        ))
    }
}
