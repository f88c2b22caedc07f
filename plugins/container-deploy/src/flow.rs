//! Deploy and rollback, against a [`Host`].
//!
//! The containers of a service `NAME`:
//!
//! - `NAME` — the current release, running;
//! - `NAME-previous` — the release before it, stopped: what `rollback: true`
//!   and a failed deploy's automatic rollback swap back in (exactly one is
//!   kept; a deploy removes the one before it);
//! - `NAME-next` — the new release while a `start-first` deploy checks it,
//!   and the release being rolled back from during a rollback. A leftover
//!   one (a step that was killed midway) is removed by the next deploy.
//!
//! Each carries the labels `viaduct.service=NAME`, `viaduct.release=ID` and
//! `viaduct.commit=SHA`. A container with one of these names but without
//! the service label was not made by this plugin: the step refuses to touch
//! it.

use std::fmt;

use viaduct_plugin_common::{release::default_id, time::Utc};
use viaduct_plugin_sdk::{Meta, Result, bail, log::Level};

use crate::{
    engine::{Container, Engine, Host, Redactor, strings},
    http::{self, HttpUrl},
    inputs::{Action, Check, Deploy, Spec, Strategy},
};

/// How many of a failed container's log lines go into the step log.
pub const LOG_LINES: u32 = 50;

/// What the service ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The new release runs and is healthy.
    Deployed,
    /// The previous release runs again (a failed deploy, or `rollback`).
    RolledBack,
    /// Neither: see the message.
    Failed,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Deployed => "deployed",
            Status::RolledBack => "rolled_back",
            Status::Failed => "failed",
        })
    }
}

/// A release of the service: its container, id and image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    /// Container id (empty when it no longer exists).
    pub container: String,
    /// Release id.
    pub id: String,
    /// Image.
    pub image: String,
}

impl Release {
    fn of(c: &Container) -> Self {
        Self { container: c.id.clone(), id: c.release.clone(), image: c.image.clone() }
    }

    /// `release `ID` (image `IMAGE`)` for messages.
    pub fn describe(&self) -> String {
        format!("release `{}` (image `{}`)", self.id, self.image)
    }
}

/// One row of the summary: what was done and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The step (`run`, `health`…).
    pub step: String,
    /// What it did.
    pub what: String,
    /// Milliseconds.
    pub took_ms: u64,
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The service.
    pub name: String,
    /// Deploy or rollback.
    pub rollback: bool,
    /// The outcome.
    pub status: Status,
    /// The engine's version line and where it runs.
    pub engine: String,
    /// How the container was replaced (deploys).
    pub strategy: Option<Strategy>,
    /// What runs as `NAME` now, if anything.
    pub live: Option<Release>,
    /// What is kept stopped as `NAME-previous`, if anything.
    pub previous: Option<Release>,
    /// The release that failed (a failed deploy or rollback).
    pub failed: Option<Release>,
    /// From the new container's start to its health check passing.
    pub healthy_after_ms: Option<u64>,
    /// When the new release became `NAME` and healthy (Unix ms).
    pub switched_ms: Option<u64>,
    /// What was done.
    pub rows: Vec<Row>,
    /// Why the step fails (`None`: it succeeds).
    pub error: Option<String>,
}

/// A passed health check.
struct Healthy {
    /// When it passed (Unix ms).
    at_ms: u64,
}

/// The service's containers.
#[derive(Default)]
struct Slots {
    current: Option<Container>,
    previous: Option<Container>,
    next: Option<Container>,
}

struct Flow<'h, 's, H: Host> {
    eng: Engine<'h, H>,
    spec: &'s Spec,
    report: Report,
}

/// Deploys or rolls back as `spec` says. `Err`: nothing was changed (the
/// engine cannot be reached, a container is not ours, a pull failed…).
/// Once something changed, the outcome — including a failure and what
/// was restored — is in the [`Report`] (`error` set when the step fails).
pub fn execute<H: Host>(host: &mut H, spec: &Spec, meta: &Meta) -> Result<Report> {
    let redactor = Redactor::new(spec.secrets());
    let eng = Engine::detect(host, spec.engine, spec.host.as_deref(), redactor)?;
    let engine = format!("{}{}", eng.version, eng.at());
    let mut flow = Flow {
        eng,
        spec,
        report: Report {
            name: spec.name.clone(),
            rollback: matches!(spec.action, Action::Rollback),
            status: Status::Failed,
            engine,
            strategy: None,
            live: None,
            previous: None,
            failed: None,
            healthy_after_ms: None,
            switched_ms: None,
            rows: Vec::new(),
            error: None,
        },
    };
    flow.eng.log(Level::Info, format!("using {}", flow.report.engine));
    if !spec.ignored.is_empty() {
        flow.eng.log(Level::Warn, format!("ignored with `rollback: true`: {}", spec.ignored.join(", ")));
    }
    flow.preflight()?;
    let slots = flow.slots()?;
    match &spec.action {
        Action::Deploy(d) => {
            flow.report.strategy = Some(d.strategy);
            let release = flow.release_id(d, &slots, meta);
            flow.deploy(d, slots, &release, meta)?;
        }
        Action::Rollback => flow.rollback(slots)?,
    }
    Ok(flow.report)
}

impl<H: Host> Flow<'_, '_, H> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn slot(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.spec.name)
    }

    fn now(&mut self) -> u64 {
        self.eng.host().now_ms()
    }

    /// Runs `f` as a summary row.
    fn row<T>(&mut self, step: &str, what: impl Into<String>, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let started = self.now();
        let result = f(self);
        let took_ms = self.now().saturating_sub(started);
        let what = what.into();
        let what = if result.is_err() { format!("{what} — failed") } else { what };
        self.report.rows.push(Row { step: step.to_owned(), what, took_ms });
        result
    }

    /// An HTTP check must be able to reach anything at all: without the
    /// network granted, say so before changing anything.
    fn preflight(&mut self) -> Result<()> {
        let Check::Http(url) = &self.spec.health.check else { return Ok(()) };
        let url = url.clone();
        match self.eng.host().http_get(&url, self.spec.health.timeout) {
            Err(e) if e.denied => bail!(
                "the HTTP health check is made by the plugin, and this step has no network: add \
                 `allow: {{ network: true }}` to the step (or check with `health.command`) — nothing was changed"
            ),
            Err(e) if e.lookup => bail!(
                "the health URL's host cannot be resolved from the runner ({e}); without \
                 `allow: {{ network: true }}` on the step the plugin cannot resolve names — nothing was changed"
            ),
            Err(e) => self.eng.log(Level::Debug, format!("{url} before the deploy: {e}")),
            Ok(status) => self.eng.log(Level::Debug, format!("{url} before the deploy: HTTP {status}")),
        }
        Ok(())
    }

    /// Reads `NAME`, `NAME-previous` and `NAME-next`; refuses containers of
    /// those names that are not this service's.
    fn slots(&mut self) -> Result<Slots> {
        let name = self.name().to_owned();
        let wanted = [name.clone(), self.slot("-previous"), self.slot("-next")];
        let started = self.now();
        let present = self.eng.names_like(&name)?;
        let mut found: Vec<Option<Container>> = Vec::new();
        for slot in &wanted {
            if !present.contains(slot) {
                found.push(None);
                continue;
            }
            let c = self.eng.inspect(slot)?;
            if c.service != name {
                bail!(
                    "a container named `{slot}` exists that this plugin did not create (it has no \
                     `viaduct.service={name}` label): remove or rename it first — nothing was changed"
                );
            }
            found.push(Some(c));
        }
        let describe = |c: &Option<Container>, slot: &str| {
            c.as_ref().map(|c| format!("`{slot}`: release `{}` ({})", c.release, c.status))
        };
        let what: Vec<String> = found.iter().zip(&wanted).filter_map(|(c, s)| describe(c, s)).collect();
        let took_ms = self.now().saturating_sub(started);
        let what = if what.is_empty() { "no container yet: a first deploy".to_owned() } else { what.join("; ") };
        self.eng.log(Level::Info, &what);
        self.report.rows.push(Row { step: "inspect".into(), what, took_ms });
        let mut it = found.into_iter();
        Ok(Slots { current: it.next().flatten(), previous: it.next().flatten(), next: it.next().flatten() })
    }

    /// The new release's id: the input, else `<UTC time>-<commit12>`, made
    /// unique against the releases kept.
    fn release_id(&mut self, d: &Deploy, slots: &Slots, meta: &Meta) -> String {
        if let Some(r) = &d.release {
            return r.clone();
        }
        let now = self.now();
        let base = default_id(Utc::from_unix(now / 1000), &meta.commit);
        let taken =
            |id: &str| [&slots.current, &slots.previous].iter().any(|c| c.as_ref().is_some_and(|c| c.release == id));
        if !taken(&base) {
            return base;
        }
        (2..).map(|n| format!("{base}-{n}")).find(|c| !taken(c)).expect("an unused suffix")
    }

    /// `run -d --name=… …` for a new container of release `release`.
    fn run_args(&self, d: &Deploy, container: &str, release: &str, meta: &Meta) -> Vec<String> {
        let commit: String = meta.commit.chars().filter(char::is_ascii_alphanumeric).collect();
        let mut args = strings(["run", "-d"]);
        args.push(format!("--name={container}"));
        args.push(format!("--label=viaduct.service={}", self.name()));
        args.push(format!("--label=viaduct.release={release}"));
        args.push(format!("--label=viaduct.commit={commit}"));
        args.push(format!("--restart={}", d.restart_policy));
        args.extend(d.ports.iter().map(|p| format!("--publish={p}")));
        // Names only: the values are in the CLI's environment.
        args.extend(d.env.iter().map(|(k, _)| format!("--env={k}")));
        args.extend(d.volumes.iter().map(|v| format!("--volume={v}")));
        if let Some(n) = &d.network {
            args.push(format!("--network={n}"));
        }
        args.push(d.image.clone());
        args.extend(d.command.iter().cloned());
        args
    }

    fn deploy(&mut self, d: &Deploy, slots: Slots, release: &str, meta: &Meta) -> Result<()> {
        if let Some(next) = &slots.next {
            let (slot, id) = (self.slot("-next"), next.release.clone());
            self.eng.log(Level::Warn, format!("removing `{slot}` (release `{id}`), left over by an interrupted step"));
            self.row("remove", format!("`{slot}` (left over)"), |f| f.eng.remove(&slot, f.spec.stop_timeout))?;
        }
        if d.pull {
            self.row("pull", format!("`{}`", d.image), |f| f.eng.pull(&d.image))?;
        }
        let new = Release { container: String::new(), id: release.to_owned(), image: d.image.clone() };
        match d.strategy {
            Strategy::StopFirst => self.stop_first(d, slots, new, meta),
            Strategy::StartFirst => {
                if matches!(self.spec.health.check, Check::Http(_)) && slots.current.is_some() {
                    self.eng.log(
                        Level::Warn,
                        "start-first with an HTTP check: the URL must reach the new container (`-next`), not the \
                         running one, or the check proves nothing (`health.command` runs in the new container)",
                    );
                }
                self.start_first(d, slots, new, meta)
            }
        }
    }

    /// Stop the old container (kept as `NAME-previous`), run the new one as
    /// `NAME`, check it; on failure swap the old one back.
    fn stop_first(&mut self, d: &Deploy, slots: Slots, mut new: Release, meta: &Meta) -> Result<()> {
        let name = self.name().to_owned();
        let previous_slot = self.slot("-previous");
        let old = slots.current.clone();
        if let Some(cur) = &old {
            if let Some(p) = &slots.previous {
                let what = format!("`{previous_slot}` (release `{}`): one previous release is kept", p.release);
                self.row("remove", what, |f| f.eng.remove(&previous_slot, f.spec.stop_timeout))?;
            }
            let timeout = self.spec.stop_timeout;
            if let Err(e) =
                self.row("stop", format!("`{name}` (release `{}`)", cur.release), |f| f.eng.stop(&name, timeout))
            {
                // Still `NAME`: make sure it runs, and change nothing else.
                let _ = self.eng.start(&name);
                return Err(e);
            }
            if let Err(e) =
                self.row("rename", format!("`{name}` → `{previous_slot}`"), |f| f.eng.rename(&name, &previous_slot))
            {
                let _ = self.eng.start(&name);
                return Err(e);
            }
        }
        // From here on the old release is `NAME-previous`, stopped.
        let started = self.now();
        let args = self.run_args(d, &name, &new.id, meta);
        let run = self
            .row("run", format!("`{name}`: release `{}` from `{}`", new.id, new.image), |f| f.eng.run(&args, &d.env));
        let why = match run {
            Ok(id) => {
                new.container = id;
                match self.health(&name) {
                    Ok(h) => {
                        // It has been `NAME` since it started: the switch is when it is healthy.
                        self.report.status = Status::Deployed;
                        self.report.healthy_after_ms = Some(h.at_ms.saturating_sub(started));
                        self.report.switched_ms = Some(h.at_ms);
                        self.report.live = Some(new);
                        self.report.previous = old.as_ref().or(slots.previous.as_ref()).map(Release::of);
                        return Ok(());
                    }
                    Err(why) => format!("failed its health check: {why}"),
                }
            }
            Err(e) => format!("could not be started: {}", e.message()),
        };
        self.eng.dump_logs(&name, LOG_LINES);
        let _ = self.row("remove", format!("`{name}`: the failed release `{}`", new.id), |f| {
            f.eng.remove(&name, f.spec.stop_timeout)
        });
        new.container.clear();
        self.restore(old, new, &why);
        Ok(())
    }

    /// After a failed stop-first deploy: `NAME-previous` back as `NAME`,
    /// started and checked.
    fn restore(&mut self, old: Option<Container>, failed: Release, why: &str) {
        let name = self.name().to_owned();
        let previous_slot = self.slot("-previous");
        self.report.failed = Some(failed.clone());
        let failed = failed.describe();
        let Some(old) = old else {
            self.report.status = Status::Failed;
            self.report.error =
                Some(format!("{failed} {why}; there is no previous release to roll back to: nothing runs as `{name}`"));
            return;
        };
        let back = self.row("rollback", format!("`{previous_slot}` → `{name}`, started"), |f| {
            f.eng.rename(&previous_slot, &name)?;
            f.eng.start(&name)
        });
        let restored = Release::of(&old);
        if let Err(e) = back {
            self.report.status = Status::Failed;
            self.report.error = Some(format!(
                "{failed} {why}; rolling back to the previous {} failed too: {}",
                restored.describe(),
                e.message()
            ));
            return;
        }
        match self.health(&name) {
            Ok(_) => {
                self.report.status = Status::RolledBack;
                self.report.live = Some(restored.clone());
                self.report.error = Some(format!(
                    "{failed} {why} — rolled back to the previous {}, which is healthy again",
                    restored.describe()
                ));
            }
            Err(again) => {
                self.report.status = Status::Failed;
                self.report.live = Some(restored.clone());
                self.report.error = Some(format!(
                    "{failed} {why} — rolled back to the previous {}, which is not healthy either: {again}",
                    restored.describe()
                ));
            }
        }
    }

    /// Run the new container as `NAME-next` beside the old one; when it is
    /// healthy, stop the old one (kept as `NAME-previous`) and rename the
    /// new one `NAME`. On failure the old one is left running.
    fn start_first(&mut self, d: &Deploy, slots: Slots, mut new: Release, meta: &Meta) -> Result<()> {
        let name = self.name().to_owned();
        let (previous_slot, next_slot) = (self.slot("-previous"), self.slot("-next"));
        let old = slots.current.clone();
        let started = self.now();
        let args = self.run_args(d, &next_slot, &new.id, meta);
        let run = self.row("run", format!("`{next_slot}`: release `{}` from `{}`", new.id, new.image), |f| {
            f.eng.run(&args, &d.env)
        });
        let outcome = match run {
            Ok(id) => {
                new.container = id;
                self.health(&next_slot).map_err(|why| format!("failed its health check: {why}"))
            }
            Err(e) => Err(format!("could not be started: {}", e.message())),
        };
        let healthy = match outcome {
            Ok(h) => h,
            Err(why) => {
                self.eng.dump_logs(&next_slot, LOG_LINES);
                let _ = self.row("remove", format!("`{next_slot}`: the failed release `{}`", new.id), |f| {
                    f.eng.remove(&next_slot, f.spec.stop_timeout)
                });
                new.container.clear();
                self.report.failed = Some(new.clone());
                self.report.live = old.as_ref().map(Release::of);
                self.report.previous = slots.previous.as_ref().map(Release::of);
                self.report.status = if old.is_some() { Status::RolledBack } else { Status::Failed };
                self.report.error = Some(match &old {
                    Some(o) => format!(
                        "{} {why} — the running {} was left as it was (rolled back)",
                        new.describe(),
                        Release::of(o).describe()
                    ),
                    None => format!("{} {why}; nothing runs as `{name}`", new.describe()),
                });
                return Ok(());
            }
        };
        // The switch.
        let timeout = self.spec.stop_timeout;
        if let Some(cur) = &old {
            if let Some(p) = &slots.previous {
                let what = format!("`{previous_slot}` (release `{}`): one previous release is kept", p.release);
                self.row("remove", what, |f| f.eng.remove(&previous_slot, f.spec.stop_timeout))?;
            }
            let stopped = self.row("stop", format!("`{name}` (release `{}`)", cur.release), |f| {
                f.eng.stop(&name, timeout)?;
                f.eng.rename(&name, &previous_slot)
            });
            if let Err(e) = stopped {
                // Back to where we were: the old one running as `NAME`.
                let _ = self.eng.start(&name);
                let _ = self.eng.remove(&next_slot, timeout);
                return Err(e.context(format!("cannot switch `{name}` to release `{}`", new.id)));
            }
        }
        if let Err(e) = self.row("rename", format!("`{next_slot}` → `{name}`"), |f| f.eng.rename(&next_slot, &name)) {
            if old.is_some() {
                let _ = self.eng.rename(&previous_slot, &name);
                let _ = self.eng.start(&name);
            }
            let _ = self.eng.remove(&next_slot, timeout);
            return Err(e.context(format!("cannot switch `{name}` to release `{}`", new.id)));
        }
        let now = self.now();
        self.report.status = Status::Deployed;
        self.report.healthy_after_ms = Some(healthy.at_ms.saturating_sub(started));
        self.report.switched_ms = Some(now);
        self.report.live = Some(new);
        self.report.previous = old.as_ref().map(Release::of).or_else(|| slots.previous.as_ref().map(Release::of));
        Ok(())
    }

    /// `rollback: true`: `NAME-previous` becomes `NAME` (checked), and the
    /// release it replaces becomes `NAME-previous` — a second rollback
    /// swaps back.
    fn rollback(&mut self, slots: Slots) -> Result<()> {
        let name = self.name().to_owned();
        let (previous_slot, next_slot) = (self.slot("-previous"), self.slot("-next"));
        let Some(prev) = slots.previous.clone() else {
            bail!(
                "nothing to roll back to: there is no `{previous_slot}` container (each deploy keeps the release it \
                 replaced there) — nothing was changed"
            );
        };
        if let Some(next) = &slots.next {
            let what = format!("`{next_slot}` (release `{}`, left over)", next.release);
            self.row("remove", what, |f| f.eng.remove(&next_slot, f.spec.stop_timeout))?;
        }
        let cur = slots.current.clone();
        let timeout = self.spec.stop_timeout;
        if let Some(c) = &cur {
            let set_aside = self.row("stop", format!("`{name}` (release `{}`)", c.release), |f| {
                f.eng.stop(&name, timeout)?;
                f.eng.rename(&name, &next_slot)
            });
            if let Err(e) = set_aside {
                let _ = self.eng.start(&name);
                return Err(e);
            }
        }
        let started = self.now();
        let back = self.row("rollback", format!("`{previous_slot}` → `{name}`, started"), |f| {
            f.eng.rename(&previous_slot, &name)?;
            f.eng.start(&name)
        });
        let target = Release::of(&prev);
        let outcome = match back {
            Ok(()) => self.health(&name).map_err(|why| format!("failed its health check: {why}")),
            Err(e) => Err(format!("could not be started: {}", e.message())),
        };
        match outcome {
            Ok(h) => {
                if cur.is_some() {
                    self.row("rename", format!("`{next_slot}` → `{previous_slot}`"), |f| {
                        f.eng.rename(&next_slot, &previous_slot)
                    })?;
                }
                let now = self.now();
                self.report.status = Status::RolledBack;
                self.report.healthy_after_ms = Some(h.at_ms.saturating_sub(started));
                self.report.switched_ms = Some(now);
                self.report.live = Some(target);
                self.report.previous = cur.as_ref().map(Release::of);
                Ok(())
            }
            Err(why) => {
                self.eng.dump_logs(&name, LOG_LINES);
                self.report.failed = Some(target.clone());
                self.report.status = Status::Failed;
                // Put everything back where it was.
                let undo =
                    self.row("restore", format!("`{name}` → `{previous_slot}`; the release it replaced back"), |f| {
                        let _ = f.eng.stop(&name, timeout);
                        if f.eng.names_like(&name)?.contains(&name) {
                            f.eng.rename(&name, &previous_slot)?;
                        }
                        if cur.is_some() {
                            f.eng.rename(&next_slot, &name)?;
                            f.eng.start(&name)?;
                        }
                        Ok(())
                    });
                let Some(c) = &cur else {
                    self.report.error = Some(format!(
                        "rollback failed: the previous {} {why}; nothing runs as `{name}`",
                        target.describe()
                    ));
                    return Ok(());
                };
                let current = Release::of(c);
                self.report.previous = Some(target.clone());
                self.report.error = Some(match undo {
                    Err(e) => format!(
                        "rollback failed: the previous {} {why}; putting {} back failed too: {}",
                        target.describe(),
                        current.describe(),
                        e.message()
                    ),
                    Ok(()) => {
                        let again = self.health(&name);
                        self.report.live = Some(current.clone());
                        format!(
                            "rollback failed: the previous {} {why} — {} runs again{}",
                            target.describe(),
                            current.describe(),
                            if again.is_ok() { "" } else { " (but is not healthy either)" }
                        )
                    }
                });
                Ok(())
            }
        }
    }

    /// Waits for `container` to pass the health check: `start_period`,
    /// then up to `retries` attempts `interval` apart. A container that
    /// stops meanwhile fails at once. Without a check, the container must
    /// be seen running twice in a row, `interval` apart (so one that
    /// crashes right after starting fails). `Err`: why it is not healthy.
    fn health(&mut self, container: &str) -> Result<Healthy, String> {
        let h = self.spec.health.clone();
        let started = self.now();
        let what = match &h.check {
            Check::Http(url) => format!("GET {url}"),
            Check::Command(argv) => format!("`{}` in `{container}`", argv.join(" ")),
            Check::Running => format!("`{container}` running"),
        };
        if !h.start_period.is_zero() {
            self.eng.host().sleep(h.start_period);
        }
        let mut last = String::new();
        let mut attempts = 0;
        let mut seen_running = false;
        let outcome = loop {
            attempts += 1;
            let passed = match &h.check {
                Check::Http(url) => self.probe_http(url, h.timeout, &mut last),
                Check::Command(argv) => match self.eng.exec_in(container, argv) {
                    Ok(0) => true,
                    Ok(code) => {
                        last = format!("`{}` exited with code {code}", argv.join(" "));
                        false
                    }
                    Err(e) => {
                        last = e.message().to_owned();
                        false
                    }
                },
                Check::Running => false,
            };
            if passed {
                break Ok(());
            }
            // Did it stop (or, with no check given, is it up)?
            let running_check = matches!(h.check, Check::Running);
            match self.eng.inspect(container) {
                Ok(c) if running_check && c.running() && seen_running => break Ok(()),
                Ok(c) if c.stopped() => {
                    break Err(format!("the container stopped (status {}, exit code {})", c.status, c.exit_code));
                }
                Ok(c) if running_check => {
                    seen_running = c.running();
                    last = format!("status {}", c.status);
                }
                Ok(_) => {}
                Err(e) => break Err(e.message().to_owned()),
            }
            // Seeing it running a second time may take one attempt more.
            if attempts >= h.retries + u32::from(running_check && seen_running) {
                break Err(format!("no success in {attempts} attempts; the last: {last}"));
            }
            self.eng.log(Level::Info, format!("health check {attempts}/{}: {last}", h.retries));
            self.eng.host().sleep(h.interval);
        };
        let at_ms = self.now();
        let took_ms = at_ms.saturating_sub(started);
        let what = match &outcome {
            Ok(()) => format!("{what}: healthy after {attempts} attempt{}", if attempts == 1 { "" } else { "s" }),
            Err(why) => format!("{what}: {why}"),
        };
        self.eng.log(if outcome.is_ok() { Level::Info } else { Level::Error }, &what);
        self.report.rows.push(Row { step: "health".into(), what: what.clone(), took_ms });
        outcome.map(|()| Healthy { at_ms })
    }

    fn probe_http(&mut self, url: &HttpUrl, timeout: std::time::Duration, last: &mut String) -> bool {
        match self.eng.host().http_get(url, timeout) {
            Ok(status) if http::healthy(status) => true,
            Ok(status) => {
                *last = format!("HTTP {status}");
                false
            }
            Err(e) => {
                *last = e.message;
                false
            }
        }
    }
}
