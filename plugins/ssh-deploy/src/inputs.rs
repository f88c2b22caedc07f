//! The `with:` inputs and their validation into [`Settings`]: everything
//! is checked before anything runs.

use std::time::Duration;

use serde::Deserialize;
use viaduct_plugin_common::{release, time::Utc};
use viaduct_plugin_sdk::{Error, Meta, Result, de, ensure, fs::workspace_path};

use crate::target::{self, Target};

/// The `with:` inputs, as given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// Workspace file or directory to deploy (required unless `rollback`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub source: Option<String>,
    /// `user@host[:port]` items (a list, or commas/newlines in a string).
    #[serde(deserialize_with = "de::list")]
    pub hosts: Vec<String>,
    /// Absolute base directory on the hosts.
    #[serde(deserialize_with = "de::string")]
    pub path: String,
    /// Release id (default `<UTC yyyymmddThhmmssZ>-<commit12>`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub release: Option<String>,
    /// Remote command after each switch.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub restart: Option<String>,
    /// Remote command that must succeed after each restart.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub health: Option<String>,
    /// Tries of `health` after the first.
    #[serde(default = "default_retries", deserialize_with = "de::number")]
    pub health_retries: u32,
    /// Time between `health` tries.
    #[serde(default = "default_interval", deserialize_with = "de::string")]
    pub health_interval: String,
    /// Hosts switched at once.
    #[serde(default = "one", deserialize_with = "de::number")]
    pub max_unavailable: usize,
    /// Releases kept per host.
    #[serde(default = "default_keep", deserialize_with = "de::number")]
    pub keep: usize,
    /// Switch back to the release before the current one instead.
    #[serde(default, deserialize_with = "de::bool")]
    pub rollback: bool,
    /// The variable holding the private key.
    #[serde(default = "default_key_env", deserialize_with = "de::string")]
    pub key_env: String,
    /// The variable holding the pinned host keys.
    #[serde(default = "default_known_hosts_env", deserialize_with = "de::string")]
    pub known_hosts_env: String,
}

fn default_retries() -> u32 {
    10
}
fn default_interval() -> String {
    "1s".to_owned()
}
fn one() -> usize {
    1
}
fn default_keep() -> usize {
    5
}
fn default_key_env() -> String {
    "SSH_PRIVATE_KEY".to_owned()
}
fn default_known_hosts_env() -> String {
    "SSH_KNOWN_HOSTS".to_owned()
}

/// Most tries of `health` after the first.
pub const MAX_RETRIES: u32 = 1000;
/// Longest `health_interval`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
/// Longest `restart` or `health` command, in bytes.
pub const MAX_COMMAND: usize = 8192;

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Upload `source` as `release` and switch to it.
    Deploy {
        /// Workspace-relative source (normalised, never the workspace).
        source: String,
        /// The release id.
        release: String,
    },
    /// Switch every host back to the release before its current one.
    Rollback,
}

/// The validated inputs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deploy or roll back.
    pub mode: Mode,
    /// The hosts, in the order given.
    pub targets: Vec<Target>,
    /// The remote base directory (absolute, normalised).
    pub path: String,
    /// Remote restart command.
    pub restart: Option<String>,
    /// Remote health command.
    pub health: Option<String>,
    /// Tries of `health` after the first.
    pub health_retries: u32,
    /// Time between them.
    pub health_interval: Duration,
    /// Batch size of the rolling switch (at least 1).
    pub max_unavailable: usize,
    /// Releases kept per host.
    pub keep: usize,
}

/// The key material, taken from the environment.
pub struct Secrets {
    /// The private key (OpenSSH format), ending with a newline.
    pub key: String,
    /// known_hosts lines.
    pub known_hosts: String,
}

impl std::fmt::Debug for Secrets {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("key", &"***")
            .field("known_hosts_lines", &self.known_hosts.lines().count())
            .finish()
    }
}

/// Checks the inputs; `now` and `meta` give the default release id.
pub fn settings(w: &With, meta: &Meta, now: Utc) -> Result<Settings> {
    let targets = target::parse_all(&w.hosts)?;
    let path = remote_path(&w.path)?;
    let mode = if w.rollback {
        ensure!(w.source.is_none(), "`source` cannot be used with `rollback: true`");
        ensure!(w.release.is_none(), "`release` cannot be used with `rollback: true` (it goes back one release)");
        Mode::Rollback
    } else {
        let source = w.source.as_deref().ok_or_else(|| Error::msg("missing required input `source`"))?;
        let source = workspace_path("source", source)?;
        ensure!(source != ".", "`source` must be a file or directory inside the workspace, not the workspace itself");
        let release = match w.release.as_deref().map(str::trim) {
            Some(id) => {
                release::check_name("release", id).map_err(Error::msg)?;
                id.to_owned()
            }
            None => release::default_id(now, &meta.commit),
        };
        Mode::Deploy { source, release }
    };
    let restart = command("restart", w.restart.as_deref())?;
    let health = command("health", w.health.as_deref())?;
    ensure!(w.health_retries <= MAX_RETRIES, "`health_retries` must be at most {MAX_RETRIES}");
    let health_interval = duration("health_interval", &w.health_interval)?;
    ensure!(w.max_unavailable >= 1, "`max_unavailable` must be at least 1");
    ensure!(w.keep >= 1, "`keep` must be at least 1");
    env_name("key_env", &w.key_env)?;
    env_name("known_hosts_env", &w.known_hosts_env)?;
    Ok(Settings {
        mode,
        max_unavailable: w.max_unavailable.min(targets.len()),
        targets,
        path,
        restart,
        health,
        health_retries: w.health_retries,
        health_interval,
        keep: w.keep,
    })
}

/// Takes the key and the known hosts from `env` (the step's granted
/// environment); both must be set and non-empty. Errors name the variable,
/// never its value.
pub fn secrets<'a>(w: &With, env: impl Fn(&str) -> Option<&'a str>) -> Result<Secrets> {
    let key = env(&w.key_env).map(str::trim).unwrap_or_default();
    ensure!(
        !key.is_empty(),
        "the SSH private key is missing: the environment variable `{}` (input `key_env`) is not set or empty; give \
         the job the key as a secret",
        w.key_env
    );
    ensure!(
        key.starts_with("-----BEGIN ") && key.contains("PRIVATE KEY-----"),
        "the environment variable `{}` (input `key_env`) does not hold a private key in OpenSSH or PEM format \
         (`-----BEGIN … PRIVATE KEY-----`)",
        w.key_env
    );
    let known_hosts = env(&w.known_hosts_env).map(str::trim).unwrap_or_default();
    ensure!(
        !known_hosts.is_empty(),
        "the hosts' public keys are missing: the environment variable `{}` (input `known_hosts_env`) is not set or \
         empty; give the job the hosts' keys in known_hosts format (e.g. the output of `ssh-keyscan -p PORT HOST`, \
         checked) — a host key is never trusted on first use",
        w.known_hosts_env
    );
    for (i, line) in known_hosts.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = line.split_whitespace().count();
        let marker = line.starts_with('@');
        ensure!(
            fields >= if marker { 4 } else { 3 },
            "`{}` line {} is not a known_hosts line (`host key-type base64-key`)",
            w.known_hosts_env,
            i + 1
        );
    }
    let normalise = |s: &str| {
        let mut s = s.replace("\r\n", "\n");
        s.push('\n');
        s
    };
    Ok(Secrets { key: normalise(key), known_hosts: normalise(known_hosts) })
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn env_name(input: &str, name: &str) -> Result<()> {
    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ensure!(ok, "`{input}` must name an environment variable (letters, digits, `_`), not `{}`", name.escape_debug());
    Ok(())
}

/// Checks the remote base directory: absolute, not `/`, no `.` or `..`
/// components, only `[A-Za-z0-9/._+@,=-]` (no whitespace, quotes, shell
/// or control characters: it also goes into `scp` destinations, which an
/// old `scp` hands to the remote shell). Returns it without a trailing `/`
/// or doubled `/`.
pub fn remote_path(path: &str) -> Result<String> {
    let bad = |why: &str| Error::msg(format!("`path` {why}: `{}`", path.escape_debug()));
    if !path.starts_with('/') {
        return Err(bad("must be an absolute directory"));
    }
    if path.len() > 1024 {
        return Err(bad("is too long"));
    }
    if let Some(c) = path.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._+@,=-".contains(*c))) {
        return Err(bad(&format!(
            "may only hold letters, digits and `/._+@,=-` (found {})",
            if c.is_whitespace() || c.is_control() { format!("{:?}", c) } else { format!("`{c}`") }
        )));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad("must not have `.` or `..` components"));
    }
    if parts.is_empty() {
        return Err(bad("must not be the root directory"));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A remote command input: trimmed, `None` when empty.
fn command(input: &str, value: Option<&str>) -> Result<Option<String>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    ensure!(v.len() <= MAX_COMMAND, "`{input}` is longer than {MAX_COMMAND} bytes");
    ensure!(!v.contains('\0'), "`{input}` contains a NUL byte");
    Ok(Some(v.to_owned()))
}

/// A duration: `500ms`, `1s`, `1.5s`, `2m`; a bare number is seconds. At
/// most [`MAX_INTERVAL`].
pub fn duration(input: &str, text: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| Error::msg(format!("`{input}` is not a duration such as `500ms`, `1s` or `2m`: `{t}`")))?;
    let d = Duration::from_millis((value * unit_ms).round() as u64);
    ensure!(d <= MAX_INTERVAL, "`{input}` must be at most {} s", MAX_INTERVAL.as_secs());
    Ok(d)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with(v: serde_json::Value) -> With {
        serde_json::from_value(v).unwrap()
    }

    fn meta() -> Meta {
        Meta { commit: "0123456789abcdef0123".into(), ..Meta::default() }
    }

    fn check(v: serde_json::Value) -> Result<Settings> {
        settings(&with(v), &meta(), Utc::from_unix(1_735_689_600))
    }

    fn err(v: serde_json::Value) -> String {
        check(v).unwrap_err().message().to_owned()
    }

    #[test]
    fn defaults() {
        let s = check(json!({"source": "dist", "hosts": "a@web-1,a@web-2", "path": "/srv/app/"})).unwrap();
        assert_eq!(s.mode, Mode::Deploy { source: "dist".into(), release: "20250101T000000Z-0123456789ab".into() });
        assert_eq!(s.path, "/srv/app");
        assert_eq!((s.targets.len(), s.max_unavailable, s.keep, s.health_retries), (2, 1, 5, 10));
        assert_eq!(s.health_interval, Duration::from_secs(1));
        assert_eq!((s.restart, s.health), (None, None));
        let s = check(json!({"hosts": ["a@h"], "path": "/p", "rollback": "true", "max_unavailable": 9})).unwrap();
        assert_eq!((s.mode, s.max_unavailable), (Mode::Rollback, 1));
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let base = |k: &str, v: serde_json::Value| {
            let mut o = json!({"source": "dist", "hosts": ["deploy@web-1"], "path": "/srv/app"});
            o[k] = v;
            err(o)
        };
        assert!(base("hosts", json!(["-oProxyCommand=touch /tmp/x"])).contains("is not `user@host`"));
        assert!(base("hosts", json!("x@-oProxyCommand=sh")).contains("invalid host"));
        assert!(base("path", json!("/srv/it's")).contains("may only hold"));
        assert!(base("path", json!("/srv/a b")).contains("may only hold"));
        assert!(base("path", json!("/srv/$(id)")).contains("may only hold"));
        assert!(base("path", json!("/srv/a\nb")).contains("may only hold"));
        assert!(base("path", json!("srv/app")).contains("absolute"));
        assert!(base("path", json!("/srv/../etc")).contains("`..`"));
        assert!(base("path", json!("/")).contains("root directory"));
        assert!(base("release", json!("../x")).contains("must be a simple name"));
        assert!(base("release", json!("a b")).contains("must be a simple name"));
        assert!(base("source", json!("../etc")).contains("inside the workspace"));
        assert!(base("source", json!("/etc/passwd")).contains("relative to the workspace"));
        assert!(base("source", json!(".")).contains("not the workspace itself"));
        assert!(base("source", json!("/workspace")).contains("not the workspace itself"));
        assert!(base("key_env", json!("A=B")).contains("must name an environment variable"));
        assert!(base("known_hosts_env", json!("1X")).contains("must name an environment variable"));
        assert!(base("health_interval", json!("soon")).contains("not a duration"));
        assert!(base("health_interval", json!("11m")).contains("at most 600"));
        assert!(base("health_retries", json!(1001)).contains("at most 1000"));
        assert!(base("max_unavailable", json!(0)).contains("at least 1"));
        assert!(base("keep", json!(0)).contains("at least 1"));
        assert!(base("restart", json!("x".repeat(MAX_COMMAND + 1))).contains("longer than"));
        let hosts: Vec<String> = (0..257).map(|i| format!("u@h{i}")).collect();
        assert!(base("hosts", json!(hosts)).contains("at most 256"));
        assert!(err(json!({"hosts": "a@h", "path": "/p"})).contains("missing required input `source`"));
        assert!(err(json!({"hosts": "a@h", "path": "/p", "rollback": true, "source": "x"})).contains("cannot be used"));
    }

    #[test]
    fn paths_and_durations() {
        assert_eq!(remote_path("//srv//app//").unwrap(), "/srv/app");
        assert_eq!(remote_path("/srv/app-1.2_x/@v=1,2+").unwrap(), "/srv/app-1.2_x/@v=1,2+");
        assert!(remote_path("/srv/./app").is_err());
        assert!(remote_path("~/app").is_err());
        assert_eq!(duration("d", "500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("d", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("d", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("d", " 3 ").unwrap(), Duration::from_secs(3));
        assert_eq!(duration("d", "0").unwrap(), Duration::ZERO);
        assert!(duration("d", "-1s").is_err());
        assert!(duration("d", "1h").is_err());
        assert!(duration("d", "NaNs").is_err());
    }

    const KEY: &str =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";

    #[test]
    fn secrets_are_required_and_never_shown() {
        let w = with(json!({"hosts": "a@h", "path": "/p"}));
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        let e = secrets(&w, env(&[("SSH_KNOWN_HOSTS", "h ssh-ed25519 AAAA")])).unwrap_err();
        assert!(e.message().contains("`SSH_PRIVATE_KEY` (input `key_env`) is not set or empty"), "{e}");
        let e =
            secrets(&w, env(&[("SSH_PRIVATE_KEY", "  \n"), ("SSH_KNOWN_HOSTS", "h ssh-ed25519 AAAA")])).unwrap_err();
        assert!(e.message().contains("is not set or empty"), "{e}");
        let e = secrets(&w, env(&[("SSH_PRIVATE_KEY", KEY)])).unwrap_err();
        assert!(e.message().contains("`SSH_KNOWN_HOSTS` (input `known_hosts_env`) is not set or empty"), "{e}");
        assert!(e.message().contains("never trusted on first use"), "{e}");
        let e = secrets(&w, env(&[("SSH_PRIVATE_KEY", "hunter2-secret"), ("SSH_KNOWN_HOSTS", "h k v")])).unwrap_err();
        assert!(!e.message().contains("hunter2"), "the value is never shown: {e}");
        let e = secrets(&w, env(&[("SSH_PRIVATE_KEY", KEY), ("SSH_KNOWN_HOSTS", "# c\nhost-only\n")])).unwrap_err();
        assert!(e.message().contains("line 2 is not a known_hosts line"), "{e}");

        let s =
            secrets(&w, env(&[("SSH_PRIVATE_KEY", KEY), ("SSH_KNOWN_HOSTS", "[127.0.0.1]:2222 ssh-ed25519 AAAA\r\n")]))
                .unwrap();
        assert!(s.key.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        assert_eq!(s.known_hosts, "[127.0.0.1]:2222 ssh-ed25519 AAAA\n");
        assert!(!format!("{s:?}").contains("OPENSSH"));

        let w = with(json!({"hosts": "a@h", "path": "/p", "key_env": "DEPLOY_KEY", "known_hosts_env": "PINNED"}));
        assert!(
            secrets(&w, env(&[("DEPLOY_KEY", KEY), ("PINNED", "@cert-authority *.example ssh-ed25519 AAAA")])).is_ok()
        );
        assert!(secrets(&w, env(&[("SSH_PRIVATE_KEY", KEY), ("SSH_KNOWN_HOSTS", "h k v")])).is_err());
    }
}
