//! `container-deploy`: runs or replaces a long-lived service container on
//! a Docker or Podman host, with a health check that must pass before the
//! old container is removed and an automatic rollback when it fails.
//!
//! ```yaml
//! - run: podman build -t app:${{ commit }} .
//! - uses: container-deploy@1
//!   allow: { network: true }          # for the HTTP health check
//!   with:
//!     name: app
//!     image: app:${{ commit }}
//!     ports: ["127.0.0.1:8080:8080"]
//!     env: { DATABASE_URL: "${{ secrets.DATABASE_URL }}" }
//!     health: { http: "http://127.0.0.1:8080/healthz" }
//! ```
//!
//! It drives the engine's CLI through the `exec` import (manifest
//! `exec = ["podman", "docker"]`), so the programs run where the job's
//! steps run — on the runner as the job's user for a host job, inside the
//! job's container otherwise — and `host:` points them at the engine's
//! socket. See [`flow`] for the containers a service has and what a deploy,
//! a failed deploy and a rollback do with them, [`inputs`] for what is
//! accepted, and [`http`] for the HTTP check (made by the plugin itself
//! over WASI sockets, hence `network = true` in the manifest and
//! `allow: { network: true }` on steps that use it).
//!
//! Environment values may hold secrets: they are never on a command line
//! (`run` gets `--env=NAME`, the value travels in the CLI's environment),
//! never logged, and masked in what the plugin writes (log, messages,
//! summary) — including the failed container's log lines it copies.

#![warn(missing_docs)]

pub mod engine;
pub mod flow;
pub mod http;
pub mod inputs;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use viaduct_plugin_sdk::{
    exec::{Command, Exit},
    log::{self, Level},
    markdown::{Table, code},
    prelude::*,
};

use crate::{
    engine::{Host, Redactor},
    flow::{Report, Status},
    http::{HttpUrl, ProbeError},
    inputs::With,
};

/// The host in the sandbox: `exec`, WASI sockets and clocks, the step log.
struct Sandbox;

impl Host for Sandbox {
    fn exec(
        &mut self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        capture: bool,
    ) -> Result<Exit, String> {
        let mut cmd = Command::new(program).args(args.iter().cloned()).envs(env.iter().cloned());
        if capture {
            cmd = cmd.capture_stdout();
        }
        // The SDK's message is "cannot run `…`: <why>"; the engine adds its own.
        cmd.run().map_err(|e| e.message().split_once(": ").map_or(e.message(), |(_, why)| why).to_owned())
    }

    fn http_get(&mut self, url: &HttpUrl, timeout: Duration) -> Result<u16, ProbeError> {
        http::get(url, timeout)
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&mut self, level: Level, message: &str) {
        log::write(level, message);
    }
}

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    let spec = inputs::validate(&w)?;
    let report = flow::execute(&mut Sandbox, &spec, ctx.meta())?;
    finish(&report, &Redactor::new(spec.secrets()))
}

/// The step's outputs and summary, or its failure carrying them.
pub fn finish(r: &Report, redactor: &Redactor) -> Result<Output> {
    let live = r.live.clone().unwrap_or_default();
    let ms = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = Output::new()
        .set("container", &live.container)
        .set("release", &live.id)
        .set("previous", r.previous.as_ref().map(|p| p.id.as_str()).unwrap_or_default())
        .set("image", &live.image)
        .set("status", r.status)
        .set("healthy_after_ms", ms(r.healthy_after_ms))
        .set("switched_ms", ms(r.switched_ms));
    if let Some(f) = &r.failed {
        out.insert("failed_release", &f.id);
    }
    // Outputs are read by later steps and shown: nothing secret in them.
    let outputs: Vec<(String, String)> = out.outputs().iter().map(|(k, v)| (k.clone(), redactor.apply(v))).collect();
    let mut out = Output::new();
    for (k, v) in outputs {
        out.insert(k, v);
    }
    let out = out.summary(redactor.apply(&summary(r)));
    match &r.error {
        Some(message) => Err(out.fail(redactor.apply(message))),
        None => Ok(out),
    }
}

/// `850 ms`, `1.2 s`.
pub fn took(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

/// The markdown summary: what runs now, and each step with its duration.
pub fn summary(r: &Report) -> String {
    let name = code(&r.name);
    let release = |rel: &Option<flow::Release>| rel.as_ref().map_or_else(|| "—".to_owned(), |x| code(&x.id));
    let title = match (r.status, r.rollback) {
        (Status::Deployed, _) => format!("Deployed {name}: release {}", release(&r.live)),
        (Status::RolledBack, true) => format!("Rolled back {name} to release {}", release(&r.live)),
        (Status::RolledBack, false) => {
            format!("Deploy of {name} failed: release {} rolled back to {}", release(&r.failed), release(&r.live))
        }
        (Status::Failed, true) => format!("Rollback of {name} failed"),
        (Status::Failed, false) => format!("Deploy of {name} failed"),
    };
    let mut t = Table::new(["", ""]);
    t.row(["Service", &name]);
    t.row(["Status", &code(&r.status.to_string())]);
    if let Some(live) = &r.live {
        t.row(["Running".to_owned(), format!("release {} — {}", code(&live.id), code(&live.image))]);
        if !live.container.is_empty() {
            t.row(["Container", &code(&live.container[..live.container.len().min(12)])]);
        }
    } else {
        t.row(["Running", "nothing"]);
    }
    if let Some(p) = &r.previous {
        t.row(["Previous (stopped)".to_owned(), format!("release {} — {}", code(&p.id), code(&p.image))]);
    }
    if let Some(f) = &r.failed {
        t.row(["Failed".to_owned(), format!("release {} — {}", code(&f.id), code(&f.image))]);
    }
    if let Some(s) = r.strategy {
        t.row(["Strategy", &s.to_string()]);
    }
    if let Some(ms) = r.healthy_after_ms {
        t.row(["Healthy after", &took(ms)]);
    }
    t.row(["Engine", &r.engine]);
    let mut steps = Table::new(["Step", "What", "Took"]);
    for row in &r.rows {
        steps.row([row.step.clone(), row.what.clone(), took(row.took_ms)]);
    }
    format!("### {title}\n\n{t}\n{steps}")
}

viaduct_plugin_sdk::export!(run);
