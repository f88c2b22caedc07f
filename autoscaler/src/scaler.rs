//! The loop: every `interval`, read the queue (`Runners.Pending`) and the
//! fleet (`Runners.List`), then
//!
//! 1. **reap** — an instance that exited is cleaned up; one whose runner
//!    has not connected within `connect_timeout` (a broken image, a
//!    machine that never booted) is stopped and its token revoked, and the
//!    job is tried again, at most [`MAX_TRIES`] times; one alive longer
//!    than `max_lifetime` is stopped;
//! 2. **start** — for each waiting job its runners fit (labels, executors,
//!    trust), in queue order, with no runner of its own yet, while fewer
//!    than `max_runners` instances live: a registration token bound to the
//!    job, and an instance through the provisioner.
//!
//! A job-bound runner takes its job and no other, and exits once it has
//! reported it: there is no idle fleet to scale down, and nothing to pick
//! but which jobs get a machine first (the queue's order).
//!
//! Who may do what: the autoscaler acts with an admin token (it makes
//! registration tokens); each runner gets only a one-use token for its job,
//! as a file. A hostile pipeline can at most queue jobs that fit, which
//! `max_runners` caps; a job whose labels its runners lack is never started
//! for.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use viaduct_proto::{
    ExecutorWord,
    v1::{self, Executor},
};
use viaduct_sdk::Client;

use crate::provision::{Instance, Launch, Provisioner, write_token};

/// Instances started for one job before the autoscaler gives up on it.
pub const MAX_TRIES: u32 = 3;
/// Instance directories (with their runner logs) kept after they end.
const KEEP_DIRS: usize = 100;

/// How the autoscaler behaves.
#[derive(Debug, Clone)]
pub struct ScalerConfig {
    /// The URL runners connect to.
    pub runner_server: String,
    /// The labels its runners have (a job fits if it asks for a subset).
    pub labels: Vec<String>,
    /// The executors its runners offer.
    pub executors: Vec<Executor>,
    /// Its runners take only trusted runs.
    pub protected: bool,
    /// More runner arguments.
    pub runner_args: Vec<String>,
    /// Most instances alive at once.
    pub max_runners: usize,
    /// An instance whose runner has not connected by then is stopped.
    pub connect_timeout: Duration,
    /// An instance alive this long is stopped.
    pub max_lifetime: Duration,
    /// Instance directories (tokens, work dirs, logs) go here.
    pub state_dir: PathBuf,
}

/// One instance and what is known of it.
struct Tracked {
    instance: Box<dyn Instance>,
    name: String,
    /// See [`Launch::seat`].
    seat: u32,
    /// The registration token's public id (to revoke it).
    token_id: String,
    started: Instant,
    /// Its runner connected at least once.
    connected: bool,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Jobs an instance was started for.
    pub started: Vec<String>,
    /// Jobs whose instance ended or was stopped.
    pub ended: Vec<String>,
    /// Instances alive after the pass.
    pub alive: usize,
}

/// The autoscaler.
pub struct Scaler {
    client: Client,
    cfg: ScalerConfig,
    provisioner: Box<dyn Provisioner>,
    instances: HashMap<String, Tracked>,
    tries: HashMap<String, u32>,
    given_up: HashSet<String>,
}

impl Scaler {
    /// An autoscaler acting through `client` (an admin's token).
    pub fn new(client: Client, cfg: ScalerConfig, provisioner: Box<dyn Provisioner>) -> Self {
        Self { client, cfg, provisioner, instances: HashMap::new(), tries: HashMap::new(), given_up: HashSet::new() }
    }

    /// Whether a job's requirements are met by the runners it starts.
    fn fits(&self, job: &v1::PendingJob) -> bool {
        job.runs_on.iter().all(|l| self.cfg.labels.contains(l))
            && self.cfg.executors.contains(&job.executor())
            && (!job.plugins || self.cfg.executors.contains(&Executor::Wasi))
            && !(job.untrusted && self.cfg.protected)
    }

    /// One pass: reap, then start.
    pub async fn pass(&mut self) -> anyhow::Result<Pass> {
        let pending = self.client.runners().pending(v1::PendingJobsRequest { limit: 1000 }).await?.into_inner();
        let runners = self.client.runners().list(v1::ListRunnersRequest {}).await?.into_inner().runners;
        let connected: HashSet<&str> =
            runners.iter().filter(|r| r.connected && !r.bound_job.is_empty()).map(|r| r.bound_job.as_str()).collect();
        let waiting: HashSet<&str> = pending.jobs.iter().map(|j| j.job_id.as_str()).collect();
        let mut pass = Pass::default();

        let jobs: Vec<String> = self.instances.keys().cloned().collect();
        for job in jobs {
            let Some(t) = self.instances.get_mut(&job) else { continue };
            // Its runner is (or was) there, or the job left the queue (taken
            // by it, or cancelled): either way not a machine that never came.
            t.connected |= connected.contains(job.as_str()) || !waiting.contains(job.as_str());
            let running = t.instance.running().await.unwrap_or_else(|e| {
                tracing::warn!(job, instance = t.name, error = %e, "cannot tell whether an instance runs");
                true
            });
            let age = t.started.elapsed();
            let end = if !running {
                Some("exited")
            } else if !t.connected && age > self.cfg.connect_timeout {
                Some("its runner never connected")
            } else if age > self.cfg.max_lifetime {
                Some("it outlived --max-lifetime")
            } else {
                None
            };
            let Some(why) = end else { continue };
            let Some(mut t) = self.instances.remove(&job) else { continue };
            if !t.connected {
                // Only an instance whose runner never came counts as a
                // try: a job retried after a run (retries:) starts afresh.
                *self.tries.entry(job.clone()).or_default() += 1;
            }
            if let Err(e) = t.instance.stop().await {
                tracing::warn!(job, instance = t.name, error = %e, "cannot clean up an instance");
            }
            // A token that registered a runner is spent; one that did not
            // must not outlive its instance.
            let _ = self.client.tokens().revoke(v1::RevokeTokenRequest { id: t.token_id.clone() }).await;
            if !t.connected && waiting.contains(job.as_str()) {
                tracing::warn!(job, instance = t.name, why, "an instance ended before its runner took the job");
            } else {
                tracing::info!(job, instance = t.name, why, "instance ended");
            }
            pass.ended.push(job);
        }

        let now = std::time::SystemTime::now();
        for job in &pending.jobs {
            if self.instances.len() >= self.cfg.max_runners {
                break;
            }
            let due =
                job.not_before.as_ref().is_none_or(|t| std::time::SystemTime::try_from(*t).is_ok_and(|t| t <= now));
            if self.instances.contains_key(&job.job_id) || !job.bound_runner.is_empty() || !due || !self.fits(job) {
                continue;
            }
            if self.tries.get(&job.job_id).copied().unwrap_or(0) >= MAX_TRIES {
                if self.given_up.insert(job.job_id.clone()) {
                    tracing::error!(
                        job = job.job_id,
                        tries = MAX_TRIES,
                        "none of its instances connected: giving up on it"
                    );
                }
                continue;
            }
            match self.start(job).await {
                Ok(t) => {
                    tracing::info!(job = job.job_id, instance = t.name, "instance started");
                    pass.started.push(job.job_id.clone());
                    self.instances.insert(job.job_id.clone(), t);
                }
                Err(e) => {
                    *self.tries.entry(job.job_id.clone()).or_default() += 1;
                    tracing::warn!(job = job.job_id, error = %format!("{e:#}"), "cannot start an instance");
                }
            }
        }
        // Forget jobs that left the queue.
        self.tries.retain(|j, _| waiting.contains(j.as_str()) || self.instances.contains_key(j));
        self.given_up.retain(|j| waiting.contains(j.as_str()));
        if !pass.ended.is_empty() {
            self.prune_dirs();
        }
        pass.alive = self.instances.len();
        Ok(pass)
    }

    async fn start(&mut self, job: &v1::PendingJob) -> anyhow::Result<Tracked> {
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let name = format!("auto-{}-{}", job.job_id.replace('.', "-"), hex::encode(suffix));
        let expires = self.cfg.connect_timeout.as_secs() + 60;
        let req = v1::CreateRegistrationTokenRequest {
            job_id: job.job_id.clone(),
            expires_in_seconds: expires,
            ..Default::default()
        };
        let made = self.client.runners().create_registration_token(req).await?.into_inner();
        let token_id = made.info.map(|i| i.id).unwrap_or_default();
        let mut args = vec!["--labels".to_string(), self.cfg.labels.join(",")];
        if self.cfg.protected {
            args.push("--protected".into());
        }
        args.extend(self.cfg.runner_args.iter().cloned());
        let taken: HashSet<u32> = self.instances.values().map(|t| t.seat).collect();
        let seat = (0..).find(|s| !taken.contains(s)).unwrap_or(0);
        let launch = Launch {
            job: job.job_id.clone(),
            name: name.clone(),
            server: self.cfg.runner_server.clone(),
            args,
            dir: self.cfg.state_dir.join(&name),
            seat,
        };
        let started = async {
            write_token(&launch.dir, &made.token)?;
            self.provisioner.start(&launch).await
        }
        .await;
        match started {
            Ok(instance) => Ok(Tracked { instance, name, seat, token_id, started: Instant::now(), connected: false }),
            Err(e) => {
                let _ = self.client.tokens().revoke(v1::RevokeTokenRequest { id: token_id }).await;
                let _ = std::fs::remove_file(launch.token_file());
                Err(e.into())
            }
        }
    }

    /// Stops every instance and revokes their tokens (on shutdown).
    pub async fn stop_all(&mut self) {
        for (job, mut t) in self.instances.drain() {
            tracing::info!(job, instance = t.name, "stopping instance");
            let _ = t.instance.stop().await;
            let _ = self.client.tokens().revoke(v1::RevokeTokenRequest { id: t.token_id }).await;
        }
    }

    /// Keeps the newest [`KEEP_DIRS`] directories of ended instances.
    fn prune_dirs(&self) {
        let live: HashSet<&str> = self.instances.values().map(|t| t.name.as_str()).collect();
        let Ok(entries) = std::fs::read_dir(&self.cfg.state_dir) else { return };
        let mut ended: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| !live.contains(e.file_name().to_string_lossy().as_ref()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        ended.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, dir) in ended.into_iter().skip(KEEP_DIRS) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// What it starts, for the logs.
    pub fn describe(&self) -> String {
        let executors: Vec<&str> = self.cfg.executors.iter().map(|e| e.word()).collect();
        format!(
            "{}; labels {}; executors {}; at most {} at once",
            self.provisioner.describe(),
            self.cfg.labels.join(","),
            executors.join(","),
            self.cfg.max_runners
        )
    }
}
