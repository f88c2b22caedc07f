//! Health probes of deployed services (`deployed_services`): each service
//! with a probe is checked on its interval — an HTTP(S) GET (up: a 2xx or
//! 3xx answer; redirects are not followed) or a TCP connection — and the
//! result kept in `service_health` (the last 100 probes, the health and
//! since when). When a service's health changes (up ↔ down, or a first
//! probe finds it down) its `on_change` stored pipeline is started with
//! the inputs `repo`, `environment`, `service` and `health`.
//!
//! Who decides what is probed: a deployment that passed its environment's
//! rules (allowed refs, approval) declares the services, and the server
//! connects only to the hosts the environment's maintainers admit
//! (`EnvironmentRules.probe_hosts`); a service probing another host is
//! registered, and its history says why it is not probed. An answer's body
//! is never read or shown — only its status, the time it took and a
//! connection error. A change of health starts only a stored pipeline the
//! environment admits (`on_change_pipelines`), at most once a minute per
//! service.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use viaduct_proto::v1::{Health, ProbeResult, RunSource};

use crate::{
    engine::Engine,
    error::Result,
    launch::{self, Cause, Launch, Origin},
    plugins::PluginRegistry,
    store::{
        Store, T, WriteSet,
        records::{DeployedServiceRecord, ServiceDecl, ServiceHealthRecord},
    },
};

/// Probes kept per service.
pub const HISTORY: usize = 100;
/// Probes run at once.
const CONCURRENT: usize = 16;
/// The longest sleep between looks at what is due.
const IDLE: Duration = Duration::from_secs(60);
/// The least time between two `on_change` runs of one service.
const ON_CHANGE_EVERY: Duration = Duration::from_secs(60);

/// The prober (one per leading server).
pub struct Prober {
    store: Arc<Store>,
    engine: Arc<Engine>,
    plugins: Arc<PluginRegistry>,
    http: reqwest::Client,
    /// When each service last started its `on_change` pipeline.
    fired: std::sync::Mutex<HashMap<Vec<u8>, Instant>>,
}

/// A service to probe: its key, repository, environment and declaration,
/// and what its environment admits.
struct Target {
    key: Vec<u8>,
    repo: String,
    environment: String,
    decl: ServiceDecl,
    rules: viaduct_proto::v1::EnvironmentRules,
}

/// The host a probe target names (`http(s)://[user@]host[:port]/…`,
/// `tcp://host:port`), without brackets for IPv6.
fn probe_host(target: &str) -> &str {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
}

/// Whether `rules` let the server probe `target`.
fn admitted(rules: &viaduct_proto::v1::EnvironmentRules, target: &str) -> bool {
    let host = probe_host(target).to_ascii_lowercase();
    !host.is_empty()
        && rules
            .probe_hosts
            .iter()
            .any(|g| viaduct_pipeline::glob::Glob::new(&g.to_ascii_lowercase()).is_ok_and(|g| g.is_match(&host)))
}

impl Prober {
    /// A prober over the services in `store`; `on_change` pipelines start
    /// on `engine` (resolving plugins in `plugins`).
    pub fn new(store: Arc<Store>, engine: Arc<Engine>, plugins: Arc<PluginRegistry>) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("viaduct-probe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self { store, engine, plugins, http, fired: std::sync::Mutex::default() }))
    }

    /// Probes until the server stops; `changes` wakes it when deployments
    /// registered services. Each probe runs on its own (at most
    /// [`CONCURRENT`] at once): a target that never answers delays no
    /// other.
    pub fn spawn(self: Arc<Self>, mut changes: watch::Receiver<u64>) {
        tokio::spawn(async move {
            let mut due: HashMap<Vec<u8>, Instant> = HashMap::new();
            let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
            let running: Arc<std::sync::Mutex<HashSet<Vec<u8>>>> = Arc::default();
            loop {
                let targets = self.targets().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the deployed services");
                    Vec::new()
                });
                due.retain(|k, _| targets.iter().any(|t| &t.key == k));
                let now = Instant::now();
                let mut next = now + IDLE;
                for t in targets {
                    let interval = Duration::from_secs(u64::from(t.decl.interval_s.max(1)));
                    let at = *due.entry(t.key.clone()).or_insert(now);
                    if at > now {
                        next = next.min(at);
                        continue;
                    }
                    let busy = running.lock().unwrap_or_else(|p| p.into_inner()).contains(&t.key);
                    let Some(slot) = (!busy).then(|| Arc::clone(&slots).try_acquire_owned().ok()).flatten() else {
                        // Still probing it, or every slot is: soon again.
                        next = next.min(now + Duration::from_secs(1));
                        continue;
                    };
                    due.insert(t.key.clone(), now + interval);
                    next = next.min(now + interval);
                    running.lock().unwrap_or_else(|p| p.into_inner()).insert(t.key.clone());
                    let (me, running) = (Arc::clone(&self), Arc::clone(&running));
                    tokio::spawn(async move {
                        let result = if admitted(&t.rules, &t.decl.probe) {
                            me.probe(&t.decl).await
                        } else {
                            ProbeResult {
                                time: crate::convert::timestamp(crate::store::now_ms()),
                                health: Health::Unknown as i32,
                                error: format!(
                                    "not probed: the environment's probe_hosts do not admit `{}`",
                                    probe_host(&t.decl.probe)
                                ),
                                ..Default::default()
                            }
                        };
                        if let Err(e) = me.record(&t, result).await {
                            tracing::warn!(service = %t.decl.name, error = %e, "cannot record a probe");
                        }
                        running.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.key);
                        drop(slot);
                    });
                }
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// Every registered service with a probe.
    fn targets(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for item in self.store.tree(T::DeployedServices).iter() {
            let (k, v) = item?;
            let rec: DeployedServiceRecord = crate::store::decode(T::DeployedServices, &v)?;
            let Some(decl) = rec.decl.filter(|d| !d.probe.is_empty()) else { continue };
            let mut parts = k.splitn(3, |b| *b == 0);
            let repo = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let environment = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let rules = self
                .store
                .get::<crate::store::records::EnvironmentRecord>(
                    T::Environments,
                    crate::engine::deployments::environment_key(&repo, &environment),
                )?
                .and_then(|e| e.rules)
                .unwrap_or_default();
            out.push(Target { key: k.to_vec(), repo, environment, decl, rules });
        }
        Ok(out)
    }

    /// One probe of a service.
    async fn probe(&self, decl: &ServiceDecl) -> ProbeResult {
        let timeout = Duration::from_secs(u64::from(decl.timeout_s.clamp(1, 60)));
        let started = Instant::now();
        let outcome: std::result::Result<u32, String> = if let Some(addr) = decl.probe.strip_prefix("tcp://") {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(0),
                Ok(Err(e)) => Err(format!("cannot connect: {e}")),
                Err(_) => Err(format!("no connection within {}s", timeout.as_secs())),
            }
        } else {
            match self.http.get(&decl.probe).timeout(timeout).send().await {
                Ok(answer) => Ok(u32::from(answer.status().as_u16())),
                Err(e) if e.is_timeout() => Err(format!("no answer within {}s", timeout.as_secs())),
                Err(e) => Err(format!("cannot connect: {}", error_chain(&e))),
            }
        };
        let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let (health, status, error) = match outcome {
            Ok(0) => (Health::Up, 0, String::new()),
            Ok(s) if (200..400).contains(&s) => (Health::Up, s, String::new()),
            Ok(s) => (Health::Down, s, format!("HTTP {s}")),
            Err(e) => (Health::Down, 0, e),
        };
        ProbeResult {
            time: crate::convert::timestamp(crate::store::now_ms()),
            health: health as i32,
            status,
            latency_ms,
            error,
        }
    }

    /// Keeps a probe's result; on a change of health, starts the service's
    /// `on_change` pipeline.
    async fn record(&self, t: &Target, result: ProbeResult) -> Result<()> {
        // The service may have been deleted while it was probed.
        if !self.store.tree(T::DeployedServices).contains_key(&t.key)? {
            return Ok(());
        }
        let mut rec: ServiceHealthRecord = self.store.get(T::ServiceHealth, &t.key)?.unwrap_or_default();
        let before = Health::try_from(rec.health).unwrap_or(Health::Unknown);
        let now = Health::try_from(result.health).unwrap_or(Health::Unknown);
        let changed = before != now;
        if changed {
            rec.health = now as i32;
            rec.since_ms = crate::store::now_ms();
            tracing::info!(repo = %t.repo, environment = %t.environment, service = %t.decl.name, health = ?now, error = %result.error, "service health changed");
        }
        rec.history.insert(0, result);
        rec.history.truncate(HISTORY);
        let mut ws = WriteSet::default();
        ws.put(T::ServiceHealth, &t.key, &rec);
        self.store.commit_durable(&ws).await?;
        // A first probe that finds it up is no news.
        let news = changed && !(matches!(before, Health::Unknown | Health::Unspecified) && now == Health::Up);
        if news && !t.decl.on_change.is_empty() {
            if !t.rules.on_change_pipelines.contains(&t.decl.on_change) {
                tracing::warn!(service = %t.decl.name, pipeline = %t.decl.on_change, "health change: the environment does not admit this on_change pipeline");
            } else if self.may_fire(&t.key) {
                self.start_on_change(t, now).await;
            }
        }
        Ok(())
    }

    /// Whether a service may start its `on_change` pipeline now (at most
    /// once per [`ON_CHANGE_EVERY`]); if so, it counts as started.
    fn may_fire(&self, key: &[u8]) -> bool {
        let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if fired.get(key).is_some_and(|at| now.duration_since(*at) < ON_CHANGE_EVERY) {
            return false;
        }
        fired.insert(key.to_vec(), now);
        true
    }

    /// Starts a service's `on_change` stored pipeline.
    async fn start_on_change(&self, t: &Target, health: Health) {
        let name = &t.decl.on_change;
        let word = if health == Health::Up { "up" } else { "down" };
        let started = async {
            let stored = crate::pipelines::load(&self.store, name)?;
            let inputs = [
                ("repo", t.repo.clone()),
                ("environment", t.environment.clone()),
                ("service", t.decl.name.clone()),
                ("health", word.to_string()),
            ];
            let cause = Cause {
                source: RunSource {
                    event: "manual".into(),
                    sender: format!("service health ({})", t.decl.name),
                    ..Default::default()
                },
                inputs: inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                pipeline_ref: name.clone(),
                ..Default::default()
            };
            let origin = Origin::File { name: format!("{name}.yml"), yaml: stored.yaml };
            launch::start(&self.engine, &self.store, &self.plugins, Launch::new(origin, cause), WriteSet::default())
                .await
        };
        match started.await {
            Ok(run) => {
                tracing::info!(pipeline = %name, run = ?run, service = %t.decl.name, health = word, "health change started a run")
            }
            Err(e) => {
                tracing::warn!(pipeline = %name, service = %t.decl.name, error = %e, "health change: the on_change pipeline did not start")
            }
        }
    }
}

/// An error with its causes (reqwest hides the interesting part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::EnvironmentRules;

    use super::{admitted, probe_host};

    #[test]
    fn only_hosts_the_environment_admits_are_probed() {
        assert_eq!(probe_host("https://u@api.internal:8443/health?x"), "api.internal");
        assert_eq!(probe_host("tcp://[::1]:80"), "::1");
        assert_eq!(probe_host("tcp://10.0.0.5:5432"), "10.0.0.5");
        let rules =
            EnvironmentRules { probe_hosts: vec!["*.internal".into(), "127.0.0.1".into()], ..Default::default() };
        assert!(admitted(&rules, "http://API.internal/health"));
        assert!(admitted(&rules, "tcp://127.0.0.1:80"));
        assert!(!admitted(&rules, "http://169.254.169.254/latest/meta-data"));
        assert!(!admitted(&rules, "http://evil.internal.example.com/"));
        assert!(!admitted(&EnvironmentRules::default(), "tcp://127.0.0.1:80"));
    }
}
