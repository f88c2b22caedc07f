//! The `with:` inputs, and their validation into a [`Spec`].
//!
//! Everything that reaches the engine's command line is checked here first,
//! so that no input can become an option of the CLI: names and references
//! never start with `-`, nothing contains whitespace where the engine would
//! not expect it, and every value is passed in the `--flag=value` form.
//! Environment *values* never reach the command line at all: the `run` gets
//! `--env=NAME` and the value travels in the CLI process's environment
//! (which is why some names are refused, see [`reserved_env`]).

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};
use viaduct_plugin_common::release::check_name;
use viaduct_plugin_sdk::{Error, Result, bail, de, ensure};

use crate::http::HttpUrl;

/// The `with:` inputs as the step gives them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// The service: containers are `<name>`, `<name>-previous`, `<name>-next`.
    #[serde(deserialize_with = "de::string")]
    pub name: String,
    /// The image to run (required unless `rollback`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub image: Option<String>,
    /// Pull the image first.
    #[serde(default, deserialize_with = "de::bool")]
    pub pull: bool,
    /// Published ports: `host:container` or `ip:host:container`.
    #[serde(default, deserialize_with = "de::list")]
    pub ports: Vec<String>,
    /// The container's environment (values never logged).
    #[serde(default, deserialize_with = "env_map")]
    pub env: BTreeMap<String, String>,
    /// The container's command (replacing the image's).
    #[serde(default, deserialize_with = "de::list")]
    pub command: Vec<String>,
    /// Volumes: `source:target[:options]`.
    #[serde(default, deserialize_with = "de::list")]
    pub volumes: Vec<String>,
    /// A network to attach the container to.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub network: Option<String>,
    /// The restart policy (default `unless-stopped`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub restart_policy: Option<String>,
    /// `podman`, `docker`, or unset (podman, else docker).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub engine: Option<String>,
    /// The engine's socket URL (default: the local engine).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub host: Option<String>,
    /// The health check.
    #[serde(default, deserialize_with = "health")]
    pub health: Option<HealthWith>,
    /// `stop-first` or `start-first`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub strategy: Option<String>,
    /// The release id (default `<UTC yyyymmddThhmmssZ>-<commit12>`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub release: Option<String>,
    /// Swap back to `<name>-previous` instead of deploying.
    #[serde(default, deserialize_with = "de::bool")]
    pub rollback: bool,
    /// How long a container gets to stop before it is killed (default 10s).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub stop_timeout: Option<String>,
}

/// The `health:` map.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthWith {
    /// An `http://` URL that must answer 200–399, fetched from the runner.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub http: Option<String>,
    /// A command run inside the new container that must exit 0.
    #[serde(default, deserialize_with = "de::opt_list")]
    pub command: Option<Vec<String>>,
    /// Attempts (default 30).
    #[serde(default, deserialize_with = "de::opt_number")]
    pub retries: Option<u32>,
    /// Between attempts (default 1s).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub interval: Option<String>,
    /// Before the first attempt (default 0s).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub start_period: Option<String>,
    /// Of one attempt (default 5s).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub timeout: Option<String>,
}

/// `env:` — a map of names to scalars (numbers and booleans as text).
fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde_json::Value;
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                Value::Null => Ok((k, String::new())),
                // The value is not shown: it may be a secret.
                _ => Err(D::Error::custom(format!("`{k}`: expected a string, a number or a boolean"))),
            })
            .collect(),
        _ => Err(D::Error::custom("expected a map of variable names to values")),
    }
}

/// `health:` — a map, or just the URL of an HTTP check.
fn health<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HealthWith>, D::Error> {
    use serde_json::Value;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(url) => Ok(Some(HealthWith { http: Some(url), ..HealthWith::default() })),
        v @ Value::Object(_) => serde_json::from_value(v).map(Some).map_err(D::Error::custom),
        other => Err(D::Error::custom(format!("expected a map (`http:` or `command:`, …), found {other}"))),
    }
}

/// Which engine's CLI to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// `podman`, or `docker` when podman is not installed.
    Auto,
    /// `podman`.
    Podman,
    /// `docker`.
    Docker,
}

/// How the new container replaces the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Stop the old one, start the new one (ports can only be bound once).
    StopFirst,
    /// Start the new one beside the old one, switch when it is healthy.
    StartFirst,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::StopFirst => "stop-first",
            Strategy::StartFirst => "start-first",
        })
    }
}

/// What proves a container healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A GET from the runner answers 200–399.
    Http(HttpUrl),
    /// `<engine> exec <container> argv…` exits 0.
    Command(Vec<String>),
    /// No check given: the container is running.
    Running,
}

/// The health check with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What is checked.
    pub check: Check,
    /// Attempts.
    pub retries: u32,
    /// Between attempts.
    pub interval: Duration,
    /// Before the first attempt.
    pub start_period: Duration,
    /// Of one attempt (HTTP).
    pub timeout: Duration,
}

/// A deploy's container settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// The image reference.
    pub image: String,
    /// Pull it first.
    pub pull: bool,
    /// `--publish` values.
    pub ports: Vec<String>,
    /// Environment (name, value); values never logged.
    pub env: Vec<(String, String)>,
    /// The command, if it replaces the image's.
    pub command: Vec<String>,
    /// `--volume` values.
    pub volumes: Vec<String>,
    /// `--network`.
    pub network: Option<String>,
    /// `--restart`.
    pub restart_policy: String,
    /// How it replaces the current container.
    pub strategy: Strategy,
    /// An explicit release id.
    pub release: Option<String>,
}

/// Deploy or roll back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a new release.
    Deploy(Box<Deploy>),
    /// Swap `<name>-previous` back in.
    Rollback,
}

/// The validated inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The service name.
    pub name: String,
    /// What to do.
    pub action: Action,
    /// Which CLI.
    pub engine: EngineChoice,
    /// The engine's URL, if not the local one.
    pub host: Option<String>,
    /// The health check.
    pub health: Health,
    /// `stop -t`, in seconds.
    pub stop_timeout: u64,
    /// Inputs ignored with `rollback: true` (for a warning).
    pub ignored: Vec<&'static str>,
}

impl Spec {
    /// The environment values (to keep them out of logs).
    pub fn secrets(&self) -> Vec<String> {
        match &self.action {
            Action::Deploy(d) => d.env.iter().map(|(_, v)| v.clone()).collect(),
            Action::Rollback => Vec::new(),
        }
    }
}

/// Longest service name (a DNS label).
pub const MAX_NAME: usize = 63;

/// Checks every input and builds the [`Spec`]. Errors name the input and
/// never quote an environment value.
pub fn validate(w: &With) -> Result<Spec> {
    let name = w.name.trim();
    ensure!(
        service_name(name),
        "`name` must be 1–{MAX_NAME} letters, digits, `_`, `.` or `-`, starting with a letter or digit: {}",
        shown(name)
    );
    let engine = match w.engine.as_deref().map(str::trim).unwrap_or_default() {
        "" | "auto" => EngineChoice::Auto,
        "podman" => EngineChoice::Podman,
        "docker" => EngineChoice::Docker,
        other => bail!("`engine` must be `podman` or `docker` (or unset: podman, else docker), not {}", shown(other)),
    };
    let host = w.host.as_deref().map(str::trim).filter(|h| !h.is_empty()).map(check_host).transpose()?;
    let health = health_spec(w.health.as_ref())?;
    let stop_timeout = match w.stop_timeout.as_deref() {
        Some(t) => duration("stop_timeout", t)?,
        None => Duration::from_secs(10),
    };
    ensure!(stop_timeout <= Duration::from_secs(3600), "`stop_timeout` must be at most 1h");
    let stop_timeout = stop_timeout.as_secs() + u64::from(stop_timeout.subsec_nanos() > 0);

    if w.rollback {
        for (set, input) in [(w.image.is_some(), "image"), (w.release.is_some(), "release"), (w.pull, "pull")] {
            ensure!(!set, "`{input}` cannot be used with `rollback: true` (it swaps back to `{name}-previous`)");
        }
        let ignored = [
            (!w.ports.is_empty(), "ports"),
            (!w.env.is_empty(), "env"),
            (!w.command.is_empty(), "command"),
            (!w.volumes.is_empty(), "volumes"),
            (w.network.is_some(), "network"),
            (w.restart_policy.is_some(), "restart_policy"),
            (w.strategy.is_some(), "strategy"),
        ]
        .into_iter()
        .filter_map(|(set, input)| set.then_some(input))
        .collect();
        return Ok(Spec {
            name: name.to_owned(),
            action: Action::Rollback,
            engine,
            host,
            health,
            stop_timeout,
            ignored,
        });
    }

    let image = w.image.as_deref().map(str::trim).unwrap_or_default();
    ensure!(!image.is_empty(), "missing required input `image` (an image reference, e.g. `app:1.2`)");
    check_image(image)?;
    let ports = w.ports.iter().map(|p| check_port(p.trim())).collect::<Result<Vec<_>>>()?;
    let mut env = Vec::new();
    for (k, v) in &w.env {
        check_env_name(k)?;
        ensure!(!v.contains('\0'), "the value of `env.{k}` contains a NUL byte");
        env.push((k.clone(), v.clone()));
    }
    for (i, arg) in w.command.iter().enumerate() {
        ensure!(!arg.contains('\0'), "`command` item {i} contains a NUL byte");
    }
    let volumes = w.volumes.iter().map(|v| check_volume(v.trim())).collect::<Result<Vec<_>>>()?;
    let network = w.network.as_deref().map(str::trim).filter(|n| !n.is_empty()).map(check_network).transpose()?;
    let restart_policy = check_restart(w.restart_policy.as_deref().map_or("unless-stopped", str::trim))?;
    let fixed_port = ports.iter().find(|p| fixed_host_port(p));
    let strategy = match w.strategy.as_deref().map(str::trim).unwrap_or_default() {
        "" if ports.is_empty() => Strategy::StartFirst,
        "" | "stop-first" => Strategy::StopFirst,
        "start-first" => {
            if let Some(p) = fixed_port {
                bail!(
                    "`strategy: start-first` cannot be used with the fixed host port of `{p}`: the new container \
                     could not bind it while the old one runs. Use `stop-first`, or publish without a host port \
                     (`127.0.0.1::80`)"
                );
            }
            Strategy::StartFirst
        }
        other => bail!("`strategy` must be `stop-first` or `start-first`, not {}", shown(other)),
    };
    let release = match w.release.as_deref().map(str::trim) {
        // The deploy plugins' rule for release ids (a label value here).
        Some(r) => {
            check_name("release", r).map_err(Error::msg)?;
            Some(r.to_owned())
        }
        None => None,
    };
    Ok(Spec {
        name: name.to_owned(),
        action: Action::Deploy(Box::new(Deploy {
            image: image.to_owned(),
            pull: w.pull,
            ports,
            env,
            command: w.command.clone(),
            volumes,
            network,
            restart_policy,
            strategy,
            release,
        })),
        engine,
        host,
        health,
        stop_timeout,
        ignored: Vec::new(),
    })
}

/// A service name: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}` (so never an option,
/// and `<name>-previous` is still a valid container name).
pub fn service_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A value in a message: quoted, control characters escaped, cut at 80.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect::<String>().escape_debug().to_string();
    if s.chars().count() > 80 {
        out.push('…');
    }
    format!("`{out}`")
}

fn no_blank_or_control(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An image reference: no leading `-` (it would be an option), no
/// whitespace or control characters.
pub fn check_image(image: &str) -> Result<()> {
    ensure!(
        image.len() <= 512 && !image.starts_with('-') && no_blank_or_control(image),
        "`image` must be an image reference (e.g. `registry.example/app:1.2`; no spaces, not starting with `-`): {}",
        shown(image)
    );
    Ok(())
}

/// The engine's URL: `unix://`, `tcp://` or `ssh://`, no whitespace.
pub fn check_host(host: &str) -> Result<String> {
    let rest = ["unix://", "tcp://", "ssh://"].iter().find_map(|s| host.strip_prefix(s));
    ensure!(
        rest.is_some_and(|r| !r.is_empty()) && host.len() <= 1024 && no_blank_or_control(host),
        "`host` must be the engine's socket URL — `unix:///run/podman/podman.sock`, `tcp://HOST:PORT` or \
         `ssh://USER@HOST` — without spaces: {}",
        shown(&redact_url(host))
    );
    Ok(host.to_owned())
}

/// `host` for messages: a password in it replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
            format!("{scheme}{hidden}@{hostport}{path}")
        }
        None => url.to_owned(),
    }
}

/// A published port: `[ip:]host:container[/proto]` — an IPv4 address or
/// `[IPv6]`, ports or port ranges; an empty host port lets the engine pick.
pub fn check_port(spec: &str) -> Result<String> {
    let bad = || {
        Error::msg(format!(
            "`ports` items are `HOST:CONTAINER` or `IP:HOST:CONTAINER` (optionally `/tcp` or `/udp`), e.g. \
             `8080:80` or `127.0.0.1:8080:80`: {}",
            shown(spec)
        ))
    };
    let body = match spec.rsplit_once('/') {
        Some((b, p)) if ["tcp", "udp", "sctp"].contains(&p) => b,
        Some(_) => return Err(bad()),
        None => spec,
    };
    // An IPv6 address in brackets first.
    let (ip, rest) = match body.strip_prefix('[') {
        Some(b) => {
            let (addr, rest) = b.split_once("]:").ok_or_else(bad)?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            (Some(addr), rest)
        }
        None => (None, body),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host, container) = match (ip, parts.as_slice()) {
        (None, [host, container]) | (Some(_), [host, container]) => (*host, *container),
        (None, [ip, host, container]) => {
            if ip.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(bad());
            }
            (*host, *container)
        }
        _ => return Err(bad()),
    };
    let port_range = |s: &str| {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let p = |x: &str| {
            x.len() <= 5 && x.bytes().all(|c| c.is_ascii_digit()) && matches!(x.parse::<u32>(), Ok(1..=65535))
        };
        p(a) && p(b)
    };
    if !(host.is_empty() || port_range(host)) || !port_range(container) {
        return Err(bad());
    }
    Ok(spec.to_owned())
}

/// Whether a port binds a fixed host port (not one the engine picks).
fn fixed_host_port(spec: &str) -> bool {
    let body = spec.rsplit_once('/').map_or(spec, |(b, _)| b);
    let body = body.rsplit_once(']').map_or(body, |(_, r)| r);
    let parts: Vec<&str> = body.trim_start_matches(':').split(':').collect();
    parts.len() >= 2 && !parts[parts.len() - 2].is_empty()
}

/// A volume: `source:target[:options]` or an anonymous `/target`.
pub fn check_volume(spec: &str) -> Result<String> {
    ensure!(
        !spec.is_empty() && !spec.starts_with('-') && spec.len() <= 4096 && !spec.chars().any(char::is_control),
        "`volumes` items are `SOURCE:TARGET[:OPTIONS]` (a named volume or a host path; not starting with `-`): {}",
        shown(spec)
    );
    Ok(spec.to_owned())
}

/// A network name (or a mode such as `host`, `none`, `container:NAME`).
pub fn check_network(network: &str) -> Result<String> {
    let ok = network.len() <= 256
        && network.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && network.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-:,=/".contains(&b));
    ensure!(ok, "`network` must be a network name (letters, digits, `_`, `.`, `-`): {}", shown(network));
    Ok(network.to_owned())
}

/// `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`.
pub fn check_restart(policy: &str) -> Result<String> {
    let ok = matches!(policy, "no" | "always" | "unless-stopped" | "on-failure")
        || policy
            .strip_prefix("on-failure:")
            .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()));
    ensure!(
        ok,
        "`restart_policy` must be `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`: {}",
        shown(policy)
    );
    Ok(policy.to_owned())
}

/// Why a variable cannot be given in `env`, if it cannot. Its value is
/// passed to the container through the environment of the engine's CLI
/// (never its command line), so a name must be one the runner lets a
/// plugin pass to a program (`runner/src/executor/programs.rs` refuses
/// those that change what a program loads or runs) and one the CLI does
/// not read itself (its socket, configuration, credentials, proxies).
pub fn reserved_env(name: &str) -> Option<&'static str> {
    const RUNNER: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "PROMPT_COMMAND",
        "PATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "NIX_CONFIG",
        "NIX_USER_CONF_FILES",
        "NIX_CONF_DIR",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
        "GIT_ASKPASS",
        "GIT_EXTERNAL_DIFF",
        "GIT_PAGER",
        "PAGER",
        "EDITOR",
        "VISUAL",
        "SSH_ASKPASS",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "MALLOC_CHECK_",
        "TMPDIR",
        "HOME",
    ];
    const ENGINE: &[&str] = &[
        "REGISTRY_AUTH_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "SSH_AUTH_SOCK",
        "GODEBUG",
        "GOTRACEBACK",
        "GOMAXPROCS",
        "GOGC",
        "GOMEMLIMIT",
        "STORAGE_DRIVER",
        "STORAGE_OPTS",
    ];
    const ENGINE_PREFIXES: &[&str] = &["DOCKER_", "CONTAINER_", "CONTAINERS_", "PODMAN_", "BUILDAH_", "XDG_"];
    let upper = name.to_ascii_uppercase();
    if RUNNER.contains(&upper.as_str())
        || upper.starts_with("LD_")
        || upper.starts_with("DYLD_")
        || upper.starts_with("GIT_CONFIG")
        || upper.contains("PRELOAD")
    {
        return Some("the runner does not pass it to programs a plugin runs (it changes what a program loads or runs)");
    }
    if ENGINE.contains(&upper.as_str()) || ENGINE_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        return Some("the engine's CLI reads it itself (socket, configuration, credentials or proxy)");
    }
    None
}

/// A variable name: `[A-Za-z_][A-Za-z0-9_]*`, not reserved.
pub fn check_env_name(name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ensure!(ok, "`env` names are `[A-Za-z_][A-Za-z0-9_]*`: {}", shown(name));
    if let Some(why) = reserved_env(name) {
        bail!(
            "`env.{name}` cannot be set by this plugin: values reach the container through the environment of the \
             engine's CLI, and {why}. Set it in the image (`ENV`) instead"
        );
    }
    Ok(())
}

fn health_spec(h: Option<&HealthWith>) -> Result<Health> {
    let default = HealthWith::default();
    let h = h.unwrap_or(&default);
    let check = match (h.http.as_deref().map(str::trim), &h.command) {
        (Some(_), Some(_)) => bail!("`health` takes `http` or `command`, not both"),
        (Some(url), None) => Check::Http(HttpUrl::parse(url).map_err(|e| Error::msg(format!("`health.http`: {e}")))?),
        (None, Some(argv)) => {
            ensure!(!argv.is_empty(), "`health.command` must not be empty");
            ensure!(
                argv.iter().all(|a| !a.contains('\0')) && !argv[0].starts_with('-'),
                "`health.command` must be a program and its arguments (not starting with `-`)"
            );
            Check::Command(argv.clone())
        }
        (None, None) => Check::Running,
    };
    let retries = h.retries.unwrap_or(30);
    ensure!((1..=10_000).contains(&retries), "`health.retries` must be between 1 and 10000");
    let interval = h.interval.as_deref().map_or(Ok(Duration::from_secs(1)), |s| duration("health.interval", s))?;
    let start_period = h.start_period.as_deref().map_or(Ok(Duration::ZERO), |s| duration("health.start_period", s))?;
    let timeout = h.timeout.as_deref().map_or(Ok(Duration::from_secs(5)), |s| duration("health.timeout", s))?;
    ensure!(!timeout.is_zero(), "`health.timeout` must be more than 0s");
    for (d, input) in [(interval, "interval"), (start_period, "start_period"), (timeout, "timeout")] {
        ensure!(d <= Duration::from_secs(3600), "`health.{input}` must be at most 1h");
    }
    Ok(Health { check, retries, interval, start_period, timeout })
}

/// A duration: `500ms`, `2s`, `1m30s`, `1h`, or a number of seconds.
pub fn duration(input: &str, text: &str) -> Result<Duration> {
    let s = text.trim();
    let bad = || Error::msg(format!("`{input}` must be a duration such as `500ms`, `5s` or `1m30s`: {}", shown(text)));
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
        total += part;
        rest = &rest[unit..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(json: serde_json::Value) -> Result<Spec> {
        let w: With = serde_json::from_value(json).map_err(|e| Error::msg(e.to_string()))?;
        validate(&w)
    }

    fn err(json: serde_json::Value) -> String {
        with(json).unwrap_err().message().to_owned()
    }

    #[test]
    fn defaults() {
        let s = with(serde_json::json!({"name": "web", "image": "app:1", "ports": ["8080:80"]})).unwrap();
        let Action::Deploy(d) = &s.action else { panic!() };
        assert_eq!((d.strategy, d.restart_policy.as_str()), (Strategy::StopFirst, "unless-stopped"));
        assert_eq!(s.health.check, Check::Running);
        assert_eq!(
            (s.health.retries, s.health.interval, s.health.start_period),
            (30, Duration::from_secs(1), Duration::ZERO)
        );
        assert_eq!((s.engine, s.host.as_deref(), s.stop_timeout), (EngineChoice::Auto, None, 10));
        let s =
            with(serde_json::json!({"name": "web", "image": "app:1", "health": "http://127.0.0.1:8080/up"})).unwrap();
        let Action::Deploy(d) = &s.action else { panic!() };
        assert_eq!(d.strategy, Strategy::StartFirst, "no ports: start-first");
        assert!(matches!(&s.health.check, Check::Http(u) if u.port == 8080 && u.path == "/up"));
        let s = with(serde_json::json!({
            "name": "web", "image": "app:1", "ports": "127.0.0.1::80\n[::1]::80/udp",
            "env": {"A": 1, "B": true, "C": "x"}, "strategy": "start-first", "stop_timeout": "1500ms",
            "health": {"command": ["wget", "-q", "localhost"], "retries": "3", "interval": "1m30s", "start_period": 2}
        }))
        .unwrap();
        let Action::Deploy(d) = &s.action else { panic!() };
        assert_eq!(d.env, [("A".into(), "1".into()), ("B".into(), "true".into()), ("C".into(), "x".into())]);
        assert_eq!(s.health.interval, Duration::from_secs(90));
        assert_eq!(s.health.start_period, Duration::from_secs(2));
        assert_eq!(s.stop_timeout, 2, "rounded up");
        assert_eq!(s.secrets(), ["1", "true", "x"]);
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let base = |k: &str, v: serde_json::Value| {
            let mut m = serde_json::json!({"name": "web", "image": "app:1"});
            m[k] = v;
            err(m)
        };
        assert!(base("name", "-x".into()).contains("`name` must be"));
        assert!(base("name", "a b".into()).contains("`name` must be"));
        assert!(base("name", "x".repeat(64).into()).contains("`name` must be"));
        assert!(base("image", "--privileged".into()).contains("`image` must be"));
        assert!(base("image", "app:1 --privileged".into()).contains("`image` must be"));
        assert!(base("host", "unix:///run/podman.sock --log-level debug".into()).contains("`host` must be"));
        assert!(base("host", "-Hunix:///x".into()).contains("`host` must be"));
        assert!(base("host", "http://x".into()).contains("`host` must be"));
        assert!(base("ports", serde_json::json!(["80:80 --rm"])).contains("`ports` items"));
        assert!(base("ports", serde_json::json!(["--privileged"])).contains("`ports` items"));
        assert!(base("ports", serde_json::json!(["80"])).contains("`ports` items"));
        assert!(base("ports", serde_json::json!(["0:80"])).contains("`ports` items"));
        assert!(base("ports", serde_json::json!(["1.2.3:80:80"])).contains("`ports` items"));
        assert!(base("volumes", serde_json::json!(["--privileged"])).contains("`volumes` items"));
        assert!(base("network", " -x".into()).contains("`network` must be"));
        assert!(base("network", "a b".into()).contains("`network` must be"));
        assert!(base("restart_policy", "always --privileged".into()).contains("`restart_policy`"));
        assert!(base("strategy", "yolo".into()).contains("`strategy`"));
        assert!(base("engine", "kubectl".into()).contains("`engine`"));
        assert!(base("release", "../x".into()).contains("`release` must be"));
        assert!(base("env", serde_json::json!({"A=B": "x"})).contains("`env` names"));
        assert!(base("env", serde_json::json!({"-e": "x"})).contains("`env` names"));
        for reserved in
            ["LD_PRELOAD", "PATH", "DOCKER_HOST", "CONTAINER_HOST", "https_proxy", "HOME", "XDG_RUNTIME_DIR"]
        {
            let e = base("env", serde_json::json!({reserved: "secret-value"}));
            assert!(e.contains("cannot be set by this plugin") && !e.contains("secret-value"), "{reserved}: {e}");
        }
        let e = base("env", serde_json::json!({"X": ["secret-value"]}));
        assert!(!e.contains("secret-value"), "{e}");
        assert!(base("health", serde_json::json!({"http": "https://x/"})).contains("only `http://`"));
        assert!(base("health", serde_json::json!({"http": "http://u:pw@x/"})).contains("credentials"));
        assert!(base("health", serde_json::json!({"http": "http://x/", "command": ["true"]})).contains("not both"));
        assert!(base("health", serde_json::json!({"command": []})).contains("must not be empty"));
        assert!(base("health", serde_json::json!({"retries": 0})).contains("between 1"));
        assert!(base("health", serde_json::json!({"interval": "soon"})).contains("duration"));
        assert!(base("health", serde_json::json!({"bogus": 1})).contains("unknown field"));
        let mut m =
            serde_json::json!({"name": "web", "image": "app:1", "strategy": "start-first", "ports": ["8080:80"]});
        assert!(err(m.clone()).contains("fixed host port"));
        m["ports"] = serde_json::json!(["127.0.0.1::80"]);
        assert!(with(m).is_ok());
        assert!(err(serde_json::json!({"name": "web"})).contains("missing required input `image`"));
    }

    #[test]
    fn rollback_inputs() {
        let s = with(serde_json::json!({"name": "web", "rollback": "true", "ports": ["80:80"]})).unwrap();
        assert_eq!((s.action, s.ignored), (Action::Rollback, vec!["ports"]));
        assert!(err(serde_json::json!({"name": "web", "rollback": true, "image": "x"})).contains("cannot be used"));
        assert!(err(serde_json::json!({"name": "web", "rollback": true, "release": "x"})).contains("cannot be used"));
    }

    #[test]
    fn durations_and_urls() {
        assert_eq!(duration("x", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("x", "1h2m3s").unwrap(), Duration::from_secs(3723));
        assert_eq!(duration("x", "7").unwrap(), Duration::from_secs(7));
        for bad in ["", "s", "1d", "1.5s", "-1s", "1 s"] {
            assert!(duration("x", bad).is_err(), "{bad}");
        }
        assert_eq!(redact_url("ssh://me:hunter2@host:22/run/podman.sock"), "ssh://me:***@host:22/run/podman.sock");
        assert_eq!(redact_url("ssh://me@host"), "ssh://me@host");
        assert_eq!(redact_url("unix:///run/x.sock"), "unix:///run/x.sock");
        assert!(fixed_host_port("8080:80") && fixed_host_port("127.0.0.1:8080:80/tcp") && fixed_host_port("[::1]:1:2"));
        assert!(!fixed_host_port("127.0.0.1::80") && !fixed_host_port("[::1]::80"));
    }
}
