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
//! Before the first pass starts anything, and every [`ADOPT_EVERY`] passes
//! after, it asks the provisioner for the instances of its identity it does
//! not track ([`Provisioner::leftovers`]: those an earlier process of this
//! autoscaler left when it was killed or crashed, or one it failed to
//! remove) and **adopts** them: they count against `max_runners` and are
//! reaped like its own (an exited one in the same pass).
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
//!
//! It asks `Runners.Pending` only for the jobs its runners fit (the server
//! matches labels, executors and trust as dispatch does), the first
//! [`PENDING_LIMIT`] of them in dispatch order — more than it could start
//! at once — so jobs that do not fit never hide those that do. Should more
//! fitting jobs wait than are listed, it warns.

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

use crate::provision::{Instance, Launch, Leftover, Owner, Provisioner, write_token};

/// Instances started for one job before the autoscaler gives up on it.
pub const MAX_TRIES: u32 = 3;
/// Passes between looks for instances it does not track.
pub const ADOPT_EVERY: u32 = 60;
/// Waiting jobs asked for in a pass (the most `Runners.Pending` lists).
pub const PENDING_LIMIT: u32 = 1000;
/// What the scaler notes of an instance in its directory, for the same
/// autoscaler once restarted (see [`Meta`]).
const META_FILE: &str = "instance";
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
    /// Its identity (kept in `state_dir`: see [`crate::identity`]), on
    /// everything it starts.
    pub id: String,
}

/// One instance and what is known of it.
struct Tracked {
    instance: Box<dyn Instance>,
    name: String,
    /// The job it was started for.
    job: String,
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
    /// Jobs of instances adopted (left by an earlier process).
    pub adopted: Vec<String>,
    /// Instances alive after the pass.
    pub alive: usize,
}

/// The autoscaler.
pub struct Scaler {
    client: Client,
    cfg: ScalerConfig,
    provisioner: Box<dyn Provisioner>,
    /// By instance name.
    instances: HashMap<String, Tracked>,
    tries: HashMap<String, u32>,
    given_up: HashSet<String>,
    /// Passes until the next look for leftovers.
    adopt_in: u32,
    /// It has looked for leftovers at least once (until then it starts
    /// nothing: it would not know how many instances live).
    looked: bool,
    /// The jobs the cap held back in the last pass (logged when it changes).
    held: Vec<String>,
    /// The last pass saw only part of the queue.
    truncated: bool,
}

impl Scaler {
    /// An autoscaler acting through `client` (an admin's token).
    pub fn new(client: Client, cfg: ScalerConfig, provisioner: Box<dyn Provisioner>) -> Self {
        Self {
            client,
            cfg,
            provisioner,
            instances: HashMap::new(),
            tries: HashMap::new(),
            given_up: HashSet::new(),
            adopt_in: 0,
            looked: false,
            held: Vec::new(),
            truncated: false,
        }
    }

    /// Whether a job's requirements are met by the runners it starts.
    /// What its runners offer, for the server to match jobs to.
    fn fit(&self) -> v1::RunnerFit {
        v1::RunnerFit {
            labels: self.cfg.labels.clone(),
            executors: self.cfg.executors.iter().map(|e| *e as i32).collect(),
            protected: self.cfg.protected,
        }
    }

    /// One pass: adopt (now and then), reap, then start.
    pub async fn pass(&mut self) -> anyhow::Result<Pass> {
        let pending = self
            .client
            .runners()
            .pending(v1::PendingJobsRequest { limit: PENDING_LIMIT, fit: Some(self.fit()) })
            .await?
            .into_inner();
        let runners = self.client.runners().list(v1::ListRunnersRequest {}).await?.into_inner().runners;
        let connected: HashSet<&str> =
            runners.iter().filter(|r| r.connected && !r.bound_job.is_empty()).map(|r| r.bound_job.as_str()).collect();
        let waiting: HashSet<&str> = pending.jobs.iter().map(|j| j.job_id.as_str()).collect();
        // Whether the queue was listed whole: if not, a job missing from
        // the list may still wait, behind those listed.
        let complete = pending.fitting <= pending.jobs.len() as u64;
        if !complete && !self.truncated {
            tracing::warn!(
                waiting = pending.fitting,
                seen = pending.jobs.len(),
                "more jobs wait than Runners.Pending lists: those behind the first are not seen until the ones ahead \
                 leave the queue"
            );
        }
        self.truncated = !complete;
        let mut pass = Pass::default();
        self.adopt(&mut pass).await?;

        let names: Vec<String> = self.instances.keys().cloned().collect();
        for name in names {
            let Some(t) = self.instances.get_mut(&name) else { continue };
            let job = t.job.clone();
            // Its runner is (or was) there, or the job left the queue (taken
            // by it, or cancelled): either way not a machine that never came.
            t.connected |= connected.contains(job.as_str()) || (complete && !waiting.contains(job.as_str()));
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
            let Some(mut t) = self.instances.remove(&name) else { continue };
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
            if !t.token_id.is_empty() {
                let _ = self.client.tokens().revoke(v1::RevokeTokenRequest { id: t.token_id.clone() }).await;
            }
            if !t.connected && waiting.contains(job.as_str()) {
                tracing::warn!(job, instance = t.name, why, "an instance ended before its runner took the job");
            } else {
                tracing::info!(job, instance = t.name, why, "instance ended");
            }
            pass.ended.push(job);
        }

        let now = std::time::SystemTime::now();
        let mut tracked: HashSet<String> = self.instances.values().map(|t| t.job.clone()).collect();
        let mut held = Vec::new();
        for job in &pending.jobs {
            let due =
                job.not_before.as_ref().is_none_or(|t| std::time::SystemTime::try_from(*t).is_ok_and(|t| t <= now));
            if tracked.contains(&job.job_id) || !job.bound_runner.is_empty() || !due {
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
            if self.instances.len() >= self.cfg.max_runners {
                held.push(job.job_id.clone());
                continue;
            }
            match self.start(job).await {
                Ok(t) => {
                    tracing::info!(job = job.job_id, instance = t.name, "instance started");
                    pass.started.push(job.job_id.clone());
                    tracked.insert(job.job_id.clone());
                    self.instances.insert(t.name.clone(), t);
                }
                Err(e) => {
                    *self.tries.entry(job.job_id.clone()).or_default() += 1;
                    tracing::warn!(job = job.job_id, error = %format!("{e:#}"), "cannot start an instance");
                }
            }
        }
        if held != self.held {
            if !held.is_empty() {
                tracing::debug!(
                    waiting = held.len(),
                    first = ?&held[..held.len().min(10)],
                    max_runners = self.cfg.max_runners,
                    "at --max-runners: jobs wait for an instance to end"
                );
            }
            self.held = held;
        }
        // Forget jobs that left the queue (known only when it was listed whole).
        self.tries.retain(|j, _| !complete || waiting.contains(j.as_str()) || tracked.contains(j));
        self.given_up.retain(|j| !complete || waiting.contains(j.as_str()));
        if !pass.ended.is_empty() {
            self.prune_dirs();
        }
        pass.alive = self.instances.len();
        Ok(pass)
    }

    /// Adopts the instances of this autoscaler it does not track, on the
    /// first pass and every [`ADOPT_EVERY`] after. Until a first look has
    /// succeeded, a failure fails the pass (nothing is started without
    /// knowing how many live); after, it is tried again next pass.
    async fn adopt(&mut self, pass: &mut Pass) -> anyhow::Result<()> {
        if self.adopt_in > 0 {
            self.adopt_in -= 1;
            return Ok(());
        }
        let owner = Owner { id: self.cfg.id.clone(), state_dir: self.cfg.state_dir.clone() };
        let found = match self.provisioner.leftovers(&owner).await {
            Ok(found) => found,
            Err(e) if self.looked => {
                tracing::warn!(error = %e, "cannot look for instances left by an earlier run");
                return Ok(());
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot look for instances left by an earlier run")),
        };
        self.looked = true;
        self.adopt_in = ADOPT_EVERY.saturating_sub(1);
        for Leftover { name, job, age, instance } in found {
            if self.instances.contains_key(&name) {
                continue;
            }
            let meta = Meta::read(&self.cfg.state_dir.join(&name));
            let job = if job.is_empty() { meta.job } else { job };
            // The seat it has (its job user), else one no other has.
            let taken: HashSet<u32> = self.instances.values().map(|t| t.seat).collect();
            let seat = meta.seat.unwrap_or_else(|| (0..).find(|s| !taken.contains(s)).unwrap_or(0));
            let started = age.and_then(|a| Instant::now().checked_sub(a)).unwrap_or_else(Instant::now);
            tracing::info!(job, instance = name, age = ?age, "adopted an instance left by an earlier run");
            pass.adopted.push(job.clone());
            let t =
                Tracked { instance, name: name.clone(), job, seat, token_id: meta.token_id, started, connected: false };
            self.instances.insert(name, t);
        }
        Ok(())
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
            owner: self.cfg.id.clone(),
        };
        let meta = Meta { job: job.job_id.clone(), seat: Some(seat), token_id: token_id.clone() };
        let started = async {
            write_token(&launch.dir, &made.token)?;
            meta.write(&launch.dir)?;
            Ok::<_, anyhow::Error>(self.provisioner.start(&launch).await?)
        }
        .await;
        match started {
            Ok(instance) => Ok(Tracked {
                instance,
                name,
                job: job.job_id.clone(),
                seat,
                token_id,
                started: Instant::now(),
                connected: false,
            }),
            Err(e) => {
                let _ = self.client.tokens().revoke(v1::RevokeTokenRequest { id: token_id }).await;
                let _ = std::fs::remove_file(launch.token_file());
                Err(e)
            }
        }
    }

    /// Stops every instance and revokes their tokens (on shutdown).
    pub async fn stop_all(&mut self) {
        for (_, mut t) in self.instances.drain() {
            tracing::info!(job = t.job, instance = t.name, "stopping instance");
            let _ = t.instance.stop().await;
            if !t.token_id.is_empty() {
                let _ = self.client.tokens().revoke(v1::RevokeTokenRequest { id: t.token_id }).await;
            }
        }
    }

    /// Keeps the newest [`KEEP_DIRS`] directories of ended instances (the
    /// directory's own files, its id and lock, are no instance's).
    fn prune_dirs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.state_dir) else { return };
        let mut ended: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !self.instances.contains_key(e.file_name().to_string_lossy().as_ref()))
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

/// What the scaler notes of an instance in its directory (`instance`), so
/// that the same autoscaler, restarted, can adopt it as its own: its job,
/// its seat (a process's job user) and its token's public id (to revoke it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Meta {
    job: String,
    seat: Option<u32>,
    token_id: String,
}

impl Meta {
    fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let path = dir.join(META_FILE);
        let seat = self.seat.map(|s| s.to_string()).unwrap_or_default();
        let text = format!("job {}\nseat {seat}\ntoken-id {}\n", self.job, self.token_id);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            f.write_all(text.as_bytes())
        };
        write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// What `dir` notes, or nothing (an instance of an older autoscaler, or
    /// a directory lost).
    fn read(dir: &std::path::Path) -> Self {
        let Ok(text) = std::fs::read_to_string(dir.join(META_FILE)) else { return Self::default() };
        let mut meta = Self::default();
        for (key, value) in text.lines().filter_map(|l| l.split_once(' ')) {
            match key {
                "job" => meta.job = value.trim().to_string(),
                "seat" => meta.seat = value.trim().parse().ok(),
                "token-id" => meta.token_id = value.trim().to_string(),
                _ => {}
            }
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_noted_of_an_instance_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Meta::read(dir.path()), Meta::default(), "nothing noted");
        let meta = Meta { job: "42.1".into(), seat: Some(3), token_id: "tok_abc".into() };
        meta.write(dir.path()).unwrap();
        assert_eq!(Meta::read(dir.path()), meta);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(META_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        Meta { seat: None, ..meta.clone() }.write(dir.path()).unwrap();
        assert_eq!(Meta::read(dir.path()).seat, None);
    }
}
