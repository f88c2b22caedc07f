//! The engine's CLI, driven through a [`Host`]: in the sandbox the
//! plugin's `exec` import (manifest `exec = ["podman", "docker"]`), in unit
//! tests a fake engine.
//!
//! Podman and Docker take the same commands here (`ps`, `container
//! inspect`, `run -d`, `stop -t`, `start`, `rename`, `rm -f`, `logs`,
//! `exec`, `pull`); only the global option naming the engine differs
//! (`--url=` for podman, which then talks to that service as a remote
//! client, `--host=` for docker). Every value is passed as `--flag=value`
//! after validation ([`crate::inputs`]), so none can become an option.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use viaduct_plugin_sdk::{
    Error, Result,
    exec::{Command, Exit},
    log::Level,
};

use crate::{
    http::{HttpUrl, ProbeError},
    inputs::{EngineChoice, redact_url},
};

/// What the flow needs from the outside world.
pub trait Host {
    /// Runs `program` with `args`, `env` added to its (fixed) environment;
    /// stdout returned when `capture`, else logged. Stderr is always
    /// logged. `Err`: it could not be started.
    fn exec(&mut self, program: &str, args: &[String], env: &[(String, String)], capture: bool)
    -> Result<Exit, String>;
    /// One HTTP GET: the status code.
    fn http_get(&mut self, url: &HttpUrl, timeout: Duration) -> Result<u16, ProbeError>;
    /// Waits.
    fn sleep(&mut self, d: Duration);
    /// Wall-clock time, Unix milliseconds.
    fn now_ms(&mut self) -> u64;
    /// Writes to the step log.
    fn log(&mut self, level: Level, message: &str);
}

/// Replaces secret values (the container's environment) by `***`, in
/// everything the plugin writes: log lines, messages, the summary.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

/// Values shorter than this are not searched for (they would mask common
/// words and digits everywhere; the runner's own masking has the same rule).
pub const MIN_SECRET: usize = 4;

impl Redactor {
    /// A redactor for these values.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= MIN_SECRET).collect();
        // Longest first, so a value containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// `text` with every secret value replaced.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }
}

/// Which CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `podman`.
    Podman,
    /// `docker`.
    Docker,
}

impl Kind {
    /// The program.
    pub fn program(self) -> &'static str {
        match self {
            Kind::Podman => "podman",
            Kind::Docker => "docker",
        }
    }
}

/// A container as `container inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name (without Docker's leading `/`).
    pub name: String,
    /// The image it was created from, as named.
    pub image: String,
    /// `viaduct.service` label (empty when it is not ours).
    pub service: String,
    /// `viaduct.release` label.
    pub release: String,
    /// `running`, `exited`, `created`…
    pub status: String,
    /// Exit code of its last run.
    pub exit_code: i64,
}

impl Container {
    /// Parses one element of `container inspect`'s JSON array (Docker's
    /// and Podman's share these fields).
    pub fn from_inspect(v: &Value) -> Self {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        let labels: BTreeMap<String, String> = v
            .pointer("/Config/Labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        let mut image = s("/Config/Image");
        if image.is_empty() {
            image = s("/ImageName");
        }
        Container {
            id: s("/Id"),
            name: s("/Name").trim_start_matches('/').to_owned(),
            image,
            service: labels.get("viaduct.service").cloned().unwrap_or_default(),
            release: labels.get("viaduct.release").cloned().unwrap_or_default(),
            status: s("/State/Status"),
            exit_code: v.pointer("/State/ExitCode").and_then(Value::as_i64).unwrap_or_default(),
        }
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.status == "running"
    }

    /// Whether it has stopped for good (not starting, not restarting).
    pub fn stopped(&self) -> bool {
        matches!(self.status.as_str(), "exited" | "dead" | "stopped")
    }

    /// Its id as people read it (12 characters).
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// The engine's CLI, with the log and the redactor.
pub struct Engine<'h, H: Host> {
    host: &'h mut H,
    /// Which CLI.
    pub kind: Kind,
    /// Its `--version` line.
    pub version: String,
    /// The engine's URL as shown (a password hidden), if not local.
    pub shown_host: Option<String>,
    global: Vec<String>,
    /// Masks secret values in what is written.
    pub redactor: Redactor,
}

impl<'h, H: Host> Engine<'h, H> {
    /// Finds the CLI: `choice`, or podman and else docker. `Err` when none
    /// can be run (nothing was changed).
    pub fn detect(host: &'h mut H, choice: EngineChoice, url: Option<&str>, redactor: Redactor) -> Result<Self> {
        let candidates: &[Kind] = match choice {
            EngineChoice::Auto => &[Kind::Podman, Kind::Docker],
            EngineChoice::Podman => &[Kind::Podman],
            EngineChoice::Docker => &[Kind::Docker],
        };
        let mut why = Vec::new();
        let mut found = None;
        for &kind in candidates {
            match host.exec(kind.program(), &["--version".to_owned()], &[], true) {
                Ok(exit) => {
                    let version =
                        String::from_utf8_lossy(&exit.stdout).lines().next().unwrap_or_default().trim().to_owned();
                    found = Some((kind, if version.is_empty() { kind.program().to_owned() } else { version }));
                    break;
                }
                Err(e) => why.push(format!("{}: {e}", kind.program())),
            }
        }
        let Some((kind, version)) = found else {
            let names: Vec<&str> = candidates.iter().map(|k| k.program()).collect();
            return Err(Error::msg(format!(
                "cannot run {} where this job's steps run (the runner for a host job, the job's image otherwise): {}",
                names.join(" or "),
                why.join("; ")
            )));
        };
        let global = match (kind, url) {
            (_, None) => Vec::new(),
            (Kind::Podman, Some(u)) => vec![format!("--url={u}")],
            (Kind::Docker, Some(u)) => vec![format!("--host={u}")],
        };
        Ok(Self { host, kind, version, shown_host: url.map(redact_url), global, redactor })
    }

    /// The host (for the clock and HTTP).
    pub fn host(&mut self) -> &mut H {
        self.host
    }

    /// Logs a line, secrets masked.
    pub fn log(&mut self, level: Level, message: impl AsRef<str>) {
        let line = self.redactor.apply(message.as_ref());
        self.host.log(level, &line);
    }

    /// The command line as logged (the engine URL's password hidden).
    fn shown(&self, args: &[String]) -> String {
        let mut cmd = Command::new(self.kind.program());
        if let Some(h) = &self.shown_host {
            cmd = cmd.arg(match self.kind {
                Kind::Podman => format!("--url={h}"),
                Kind::Docker => format!("--host={h}"),
            });
        }
        cmd.args(args.iter().cloned()).to_string()
    }

    /// Runs `<engine> args…` (logged at `level`); `Err` only when it could
    /// not be started.
    pub fn call(&mut self, level: Level, args: &[String], env: &[(String, String)], capture: bool) -> Result<Exit> {
        let shown = self.shown(args);
        self.log(level, format!("$ {shown}"));
        let mut full = self.global.clone();
        full.extend(args.iter().cloned());
        let program = self.kind.program();
        self.host.exec(program, &full, env, capture).map_err(|e| Error::msg(format!("cannot run `{program}`: {e}")))
    }

    /// [`call`](Self::call), a non-zero exit being an error too.
    pub fn checked(&mut self, level: Level, args: &[String], env: &[(String, String)], capture: bool) -> Result<Exit> {
        let exit = self.call(level, args, env, capture)?;
        if !exit.success() {
            let shown = self.shown(args);
            return Err(Error::msg(format!(
                "`{shown}` failed with exit code {} (its error output is in the log above)",
                exit.code
            )));
        }
        Ok(exit)
    }

    /// Names of the containers whose name contains `name`.
    pub fn names_like(&mut self, name: &str) -> Result<Vec<String>> {
        let args = strings(["ps", "-a", "--no-trunc", &format!("--filter=name={name}"), "--format={{.Names}}"]);
        let exit = self
            .checked(Level::Debug, &args, &[], true)
            .map_err(|e| e.context(format!("cannot list the containers of the engine{}", self.at())))?;
        Ok(String::from_utf8_lossy(&exit.stdout)
            .lines()
            .flat_map(|l| l.split(','))
            .map(|n| n.trim().trim_start_matches('/').to_owned())
            .filter(|n| !n.is_empty())
            .collect())
    }

    /// ` at <url>` for messages, or nothing for the local engine.
    pub fn at(&self) -> String {
        self.shown_host.as_ref().map(|h| format!(" at `{h}`")).unwrap_or_default()
    }

    /// `container inspect name`.
    pub fn inspect(&mut self, name: &str) -> Result<Container> {
        let args = strings(["container", "inspect", name]);
        let exit = self.checked(Level::Debug, &args, &[], true)?;
        let v: Value = exit.json()?;
        let first = v.as_array().and_then(|a| a.first()).ok_or_else(|| {
            Error::msg(format!("`{} container inspect {name}` described no container", self.kind.program()))
        })?;
        Ok(Container::from_inspect(first))
    }

    /// `stop -t N name`.
    pub fn stop(&mut self, name: &str, timeout_secs: u64) -> Result<()> {
        self.checked(Level::Info, &strings(["stop", "-t", &timeout_secs.to_string(), name]), &[], true).map(drop)
    }

    /// `start name`.
    pub fn start(&mut self, name: &str) -> Result<()> {
        self.checked(Level::Info, &strings(["start", name]), &[], true).map(drop)
    }

    /// `rename from to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.checked(Level::Info, &strings(["rename", from, to]), &[], true).map(drop)
    }

    /// `rm -f name`: podman stops a running container first, giving it
    /// `stop_secs` (`-t`); docker kills it.
    pub fn remove(&mut self, name: &str, stop_secs: u64) -> Result<()> {
        let args = match self.kind {
            Kind::Podman => strings(["rm", "-f", "-t", &stop_secs.to_string(), name]),
            Kind::Docker => strings(["rm", "-f", name]),
        };
        self.checked(Level::Info, &args, &[], true).map(drop)
    }

    /// `pull image` (progress logged).
    pub fn pull(&mut self, image: &str) -> Result<()> {
        self.checked(Level::Info, &strings(["pull", image]), &[], false).map(drop)
    }

    /// `run -d …`: the new container's id. `env` values travel in the
    /// CLI's environment; `args` name them only.
    pub fn run(&mut self, args: &[String], env: &[(String, String)]) -> Result<String> {
        let exit = self.checked(Level::Info, args, env, true)?;
        let out = String::from_utf8_lossy(&exit.stdout).into_owned();
        Ok(out.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default().to_owned())
    }

    /// `exec name argv…`: whether it exited 0.
    pub fn exec_in(&mut self, name: &str, argv: &[String]) -> Result<i32> {
        let mut args = strings(["exec", name]);
        args.extend(argv.iter().cloned());
        Ok(self.call(Level::Debug, &args, &[], true)?.code)
    }

    /// The last `lines` log lines of `name` into the step log: stdout
    /// captured and masked; the container's stderr goes to the step log
    /// through the runner (which masks the job's secrets).
    pub fn dump_logs(&mut self, name: &str, lines: u32) {
        let args = strings(["logs", &format!("--tail={lines}"), name]);
        self.log(Level::Info, format!("the last {lines} log lines of `{name}`:"));
        match self.call(Level::Debug, &args, &[], true) {
            Ok(exit) => {
                let text = String::from_utf8_lossy(&exit.stdout).into_owned();
                if !text.trim().is_empty() {
                    self.log(Level::Info, text.trim_end());
                }
                if !exit.success() {
                    self.log(Level::Warn, format!("`{}` failed with exit code {}", self.shown(&args), exit.code));
                }
            }
            Err(e) => self.log(Level::Warn, e.message()),
        }
    }
}

/// `[&str]` → `Vec<String>`.
pub fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_of_both_engines() {
        let podman: Value = serde_json::json!({
            "Id": "fc963a67b872373c81cd", "Name": "web", "ImageName": "localhost/app:1",
            "State": {"Status": "running", "ExitCode": 0},
            "Config": {"Image": "localhost/app:1", "Labels": {"viaduct.service": "web", "viaduct.release": "r1"}}
        });
        let c = Container::from_inspect(&podman);
        assert_eq!((c.name.as_str(), c.image.as_str(), c.release.as_str()), ("web", "localhost/app:1", "r1"));
        assert!(c.running() && !c.stopped());
        assert_eq!(c.short_id(), "fc963a67b872");
        let docker: Value = serde_json::json!({
            "Id": "ab", "Name": "/web-previous", "State": {"Status": "exited", "ExitCode": 137},
            "Config": {"Image": "app:0", "Labels": null}
        });
        let c = Container::from_inspect(&docker);
        assert_eq!((c.name.as_str(), c.service.as_str(), c.exit_code), ("web-previous", "", 137));
        assert!(c.stopped());
    }

    #[test]
    fn redaction() {
        let r = Redactor::new(["abc".to_owned(), "s3cret".to_owned(), "s3cret-longer".to_owned()]);
        assert_eq!(r.apply("x=s3cret-longer y=s3cret z=abc"), "x=*** y=*** z=abc");
    }
}
