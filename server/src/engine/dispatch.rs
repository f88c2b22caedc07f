//! Matching queued jobs to connected runners and assigning them.
//!
//! Dispatch walks the queue in order (see `queue`) and gives each job to the
//! connected, responsive (heard from within 3 heartbeat intervals) runner
//! that takes jobs (neither draining nor paused) and has every label in its `runs_on`, the
//! executor it needs and a free slot — the one with the most free slots, to
//! spread load. It stops as soon as no runner has a free slot. Global and
//! per-pipeline limits on running jobs apply here. A job of an untrusted run
//! never goes to a protected runner. A job that fits no runner stays
//! queued, without blocking the jobs behind it.
//!
//! Assignment is where secret values leave the server: each secret a job
//! lists (and its registry credentials) is checked against its scope and
//! the run's trust here (see `trust`), whatever `launch` decided.
//!
//! Assignment is pushed over the runner's open stream, after the commit that
//! records it: there is no polling anywhere on this path.

use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedSender;
use viaduct_proto::{
    ExecutorWord as _,
    v1::{Drain, Executor, JobAssignment, JobRef, ServerMessage, Status, server_message::Msg},
};

use super::{Conn, Lease, queue::QueuedJob, tx::Tx};
use crate::{
    error::{Error, Result},
    store::{T, keys::JobKey, records::RunnerRecord},
    trust,
};

impl Tx<'_> {
    /// Assigns as many queued jobs as runners can take now.
    pub(crate) fn dispatch(&mut self) -> Result<()> {
        let mut free: HashMap<&str, u32> = HashMap::new();
        // A runner not heard from for 3 heartbeats may be hung (stopped,
        // partitioned behind a live TCP connection): give it nothing new.
        let responsive_since = self.sh.now_ms() - 3 * super::ms(self.sh.cfg.heartbeat_interval).max(500);
        for (id, c) in &self.st.runners {
            let busy = self.st.leases.busy(id);
            // An ephemeral runner's one job is the only one it gets.
            if !c.takes_jobs() || c.last_seen_ms < responsive_since || (c.ephemeral && busy > 0) {
                continue;
            }
            if c.slots > busy {
                free.insert(id.as_str(), c.slots - busy);
            }
        }
        let mut total_free: u32 = free.values().sum();
        if total_free == 0 || self.st.queue.len() == 0 {
            return Ok(());
        }
        let cfg = &self.sh.cfg;
        let mut running = self.st.leases.len();
        let mut per_pipeline: HashMap<&str, usize> = HashMap::new();
        if cfg.max_running_per_pipeline > 0 {
            for (_, l) in self.st.leases.iter() {
                *per_pipeline.entry(l.pipeline.as_str()).or_default() += 1;
            }
        }
        let now = self.sh.now_ms();
        // Jobs a connected runner was started for (job-bound tokens) wait
        // for it.
        let reserved: HashMap<JobKey, &str> = self
            .st
            .runners
            .iter()
            .filter(|(_, c)| c.takes_jobs())
            .filter_map(|(id, c)| c.bound_job.map(|j| (j, id.as_str())))
            .collect();
        let mut picks: Vec<(QueuedJob, String)> = Vec::new();
        for q in self.st.queue.iter() {
            if total_free == 0 || (cfg.max_running_jobs > 0 && running >= cfg.max_running_jobs) {
                break;
            }
            if q.not_before_ms > now {
                continue;
            }
            if cfg.max_running_per_pipeline > 0
                && per_pipeline.get(q.pipeline.as_str()).copied().unwrap_or(0) >= cfg.max_running_per_pipeline
            {
                continue;
            }
            let best = self
                .st
                .runners
                .iter()
                .filter(|(id, c)| {
                    free.get(id.as_str()).is_some_and(|f| *f > 0)
                        && fits(q, c)
                        && reserved.get(&q.job).is_none_or(|r| *r == id.as_str())
                })
                .max_by_key(|(id, _)| free.get(id.as_str()).copied().unwrap_or(0))
                .map(|(id, _)| id.as_str());
            let Some(runner) = best else { continue };
            if let Some(f) = free.get_mut(runner) {
                *f -= 1;
            }
            total_free -= 1;
            running += 1;
            *per_pipeline.entry(q.pipeline.as_str()).or_default() += 1;
            picks.push((q.clone(), runner.to_string()));
        }
        for (q, runner) in picks {
            self.assign(q, &runner)?;
        }
        Ok(())
    }

    /// Leases a queued job to `runner` and sends it the assignment. A job
    /// that lists a secret that does not exist fails here, with the name.
    fn assign(&mut self, q: QueuedJob, runner: &str) -> Result<()> {
        let key = q.job;
        self.dequeue(key);
        let instance = self.st.runners.get(runner).map(|c| c.instance.clone()).unwrap_or_default();
        let mut secrets = HashMap::new();
        let (image, credentials) =
            self.job_ref(key)?.image.as_ref().map(|i| (i.name.clone(), i.credentials.clone())).unwrap_or_default();
        let mut registry_auth = String::new();
        let wanted = self.job_ref(key)?.secrets.clone().into_iter().map(|n| (n, false));
        let run_now = self.run(key.run)?.clone();
        let source = run_now.source.clone().unwrap_or_default();
        let environment = self.job_ref(key)?.environment.as_ref().map(|e| e.name.clone());
        let facts = trust::RunFacts {
            source: &source,
            pipeline: &run_now.pipeline,
            trust: trust::effective(run_now.trust),
            environment: environment.as_deref(),
        };
        for (name, is_auth) in wanted.chain((!credentials.is_empty()).then(|| (credentials.clone(), true))) {
            let (value, scope) = match self.sh.secrets.get(&self.sh.store, &name) {
                Ok(Some(found)) => found,
                Ok(None) => {
                    let why = format!("secret `{name}` is not set (viaduct secrets set {name})");
                    return self.finish_job(key, Status::Failure, &why);
                }
                // One unreadable secret fails the jobs that list it, not
                // every dispatch after it.
                Err(e) => {
                    tracing::error!(job = %key, secret = %name, error = %e, "a secret cannot be read");
                    let why =
                        format!("secret `{name}` cannot be read ({e}): set it again (viaduct secrets set {name})");
                    return self.finish_job(key, Status::Failure, &why);
                }
            };
            let refusal = if is_auth {
                trust::credentials_refusal(&name, &scope, &image, &facts)
            } else {
                trust::secret_refusal(&name, &scope, &facts)
            };
            if let Some(why) = refusal {
                tracing::warn!(job = %key, secret = %name, "secret refused at dispatch");
                return self.finish_job(key, Status::Failure, &why);
            }
            if is_auth {
                registry_auth = value;
            } else {
                secrets.insert(name, value);
            }
        }
        let now = self.sh.now_ms();
        let run = self.run(key.run)?;
        if run.started_ms == 0 {
            run.started_ms = now;
        }
        let run = run.clone();
        let job = self.job(key)?;
        job.status = Status::Running as i32;
        job.runner_id = runner.to_string();
        job.runner_instance = instance;
        job.started_ms = now;
        job.message.clear();
        let job = job.clone();
        self.start_deployment(key)?;
        self.rollup(key.run)?;
        let expires = self.sh.instant() + self.sh.cfg.lease_ttl;
        self.set_lease(
            key,
            Some(Lease {
                attempt: job.attempt,
                runner: runner.to_string(),
                expires,
                pipeline: q.pipeline,
                steps: job.steps.len() as u32,
                log_bytes: 0,
            }),
        );
        self.sh.signals.timer.notify_one();
        tracing::debug!(job = %key, attempt = job.attempt, runner, "job assigned");
        // An ephemeral runner's one job: it takes no other, also after a
        // reconnect or a restart of the server.
        if self.st.runners.get(runner).is_some_and(|c| c.ephemeral) {
            self.mark_draining(runner)?;
        }

        let mut env = job_env(key, &job, &run);
        // An environment's variables, over the job's own (its rules passed:
        // see `deployments`).
        env.extend(self.environment_variables(&job, &run)?);
        let grant = super::grant::issue(&self.sh.grant_key, key, job.attempt, runner);
        let assignment = JobAssignment {
            job: Some(JobRef { job_id: key.to_string(), attempt: job.attempt, grant }),
            run_id: key.run.to_string(),
            job_name: job.name.clone(),
            job_key: job.key.clone(),
            steps: job.steps.clone(),
            env,
            timeout_ms: job.timeout_ms,
            image: job.image.clone(),
            secrets,
            context: job.context.clone().map(|mut c| {
                c.run_id = key.run.to_string();
                c
            }),
            logs: Vec::new(),
            source: job.source.clone(),
            services: job.services.clone(),
            network: job.network.clone(),
            cpus: job.cpus,
            memory_bytes: job.memory_bytes,
            registry_auth,
            artifacts: job.artifacts.clone(),
            pipeline: job.pipeline.clone(),
            max_step_log_bytes: self.sh.cfg.max_step_log_bytes,
            max_job_log_bytes: self.sh.cfg.max_job_log_bytes,
            traceparent: self.sh.telemetry.run_trace(key.run, run.retried).traceparent(),
            snapshots: job.snapshots,
            hold_failed_ms: if run.keep_on_failure { super::ms(self.sh.cfg.hold_failed) as u64 } else { 0 },
            resume: job
                .resume
                .as_ref()
                .map(|r| viaduct_proto::v1::ResumePlan { after_step: r.after_step, from_attempt: r.from_attempt }),
            artifacts_from: job.artifacts_from.clone(),
        };
        if let Some(conn) = self.st.runners.get(runner) {
            let to = conn.tx.clone();
            self.send(&to, ServerMessage { msg: Some(Msg::Assign(assignment)) });
        }
        Ok(())
    }
}

/// Whether `runner` holds the lease of `attempt` of `job`.
pub(crate) fn holds(st: &super::State, runner: &str, job: JobKey, attempt: u32) -> bool {
    st.leases.get(&job).is_some_and(|l| l.attempt == attempt && l.runner == runner)
}

impl Tx<'_> {
    /// Drains `runner` in memory and in its record.
    fn mark_draining(&mut self, runner: &str) -> Result<()> {
        if let Some(c) = self.conn_mut(runner) {
            c.draining = true;
        }
        // Read through this transition's own writes (a Hello's pinning may
        // be among them).
        let rec = match self.writes().pending(T::Runners, runner.as_bytes()) {
            Some(Some(bytes)) => Some(crate::store::decode::<RunnerRecord>(T::Runners, bytes)?),
            Some(None) => None,
            None => self.store().get(T::Runners, runner.as_bytes())?,
        };
        let mut rec = rec.ok_or_else(|| Error::not_found(format!("runner {runner} not found")))?;
        rec.draining = true;
        self.writes().put(T::Runners, runner.as_bytes(), &rec);
        Ok(())
    }

    /// A job ended: the connected runners registered for it (job-bound
    /// tokens) that never took it — it was cancelled while they waited —
    /// are drained and told, so they leave instead of idling.
    pub(crate) fn release_bound_runners(&mut self, job: JobKey, why: &str) -> Result<()> {
        let bound: Vec<(String, UnboundedSender<ServerMessage>)> = self
            .st
            .runners
            .iter()
            .filter(|(_, c)| c.bound_job == Some(job) && !c.draining)
            .map(|(id, c)| (id.clone(), c.tx.clone()))
            .collect();
        for (runner, tx) in bound {
            self.mark_draining(&runner)?;
            let reason = format!("job {job}, which this runner was registered for, ended: {why}");
            tracing::info!(runner, job = %job, "a runner bound to an ended job is drained");
            self.send(&tx, ServerMessage { msg: Some(Msg::Drain(Drain { reason })) });
        }
        Ok(())
    }
}

/// Whether runner `c` could take `q` were it free: labels (and
/// toolchains), executors, trust, binding. [`missing`] says what it lacks.
fn fits(q: &QueuedJob, c: &Conn) -> bool {
    c.executors.contains(&q.executor)
        && (!q.plugins || c.executors.contains(&Executor::Wasi))
        && !(q.untrusted && c.protected)
        && q.runs_on.iter().all(|l| c.labels.contains(l))
        && c.bound_job.is_none_or(|j| j == q.job)
}

/// What runner `c` lacks to take `q`, in words (empty: it [`fits`]).
/// Never names another job or runner: `Job.waiting` is read by whoever may
/// read the run.
fn missing(q: &QueuedJob, c: &Conn) -> Vec<String> {
    let mut out: Vec<String> = q.runs_on.iter().filter(|l| !c.labels.contains(*l)).map(|l| format!("`{l}`")).collect();
    if !c.executors.contains(&q.executor) {
        out.push(format!("the {} executor", q.executor.word()));
    }
    if q.plugins && !c.executors.contains(&Executor::Wasi) {
        out.push("plugin steps".into());
    }
    if q.untrusted && c.protected {
        out.push("untrusted runs (it is protected)".into());
    }
    if c.bound_job.is_some_and(|j| j != q.job) {
        out.push("other jobs (it was started for one)".into());
    }
    out
}

/// What about a queued job decides why it waits on the fleet (jobs alike
/// in these wait alike): its labels, executor, plugins, trust.
pub(crate) type WaitKey = (Vec<String>, Executor, bool, bool);

/// The [`WaitKey`] of `q`.
pub(crate) fn wait_key(q: &QueuedJob) -> WaitKey {
    (q.runs_on.clone(), q.executor, q.plugins, q.untrusted)
}

/// Why queued job `q` is still waiting, as the engine sees it at `now_ms`:
/// its retry backoff, the runner started for it, no runner at all,
/// runners that fit but are busy, or — when none fits — what the closest
/// runners lack (counted, never named). One line, for `Job.waiting`;
/// `fleet` keeps the answers for jobs alike ([`WaitKey`]) within one read.
pub(crate) fn waiting(
    st: &super::State,
    q: &QueuedJob,
    now_ms: i64,
    fleet: &mut std::collections::HashMap<WaitKey, String>,
) -> String {
    if q.not_before_ms > now_ms {
        return format!("retrying in {} s (backoff after a failed attempt)", (q.not_before_ms - now_ms + 999) / 1000);
    }
    if st.runners.values().any(|c| c.bound_job == Some(q.job) && c.takes_jobs()) {
        return "waiting for the runner started for it".into();
    }
    fleet.entry(wait_key(q)).or_insert_with(|| on_fleet(st, q)).clone()
}

/// Why `q` waits on the connected runners (see [`waiting`]).
fn on_fleet(st: &super::State, q: &QueuedJob) -> String {
    if st.runners.is_empty() {
        return "no runner is connected".into();
    }
    let (mut fit, mut free) = (0, 0);
    let mut lacks: HashMap<Vec<String>, usize> = HashMap::new();
    for (id, c) in &st.runners {
        if !fits(q, c) {
            *lacks.entry(missing(q, c)).or_default() += 1;
        } else if c.takes_jobs() {
            fit += 1;
            if c.slots > st.leases.busy(id) {
                free += 1;
            }
        }
    }
    if fit > 0 {
        return if free == 0 {
            format!("waiting for a free slot: {fit} connected runner(s) fit, all busy")
        } else {
            format!("waiting behind other jobs or a limit on running jobs ({free} fitting runner(s) have a free slot)")
        };
    }
    // Runners that fit but take no new jobs: paused ones come back by
    // themselves, so they are named first.
    let paused = st.runners.values().filter(|c| fits(q, c) && !c.draining && !c.paused.is_empty()).count();
    if paused > 0 {
        let who = if paused == 1 { "1 runner that fits is".into() } else { format!("{paused} runners that fit are") };
        return format!("no connected runner takes it now: {who} paused for want of disk");
    }
    if lacks.is_empty() {
        return "no connected runner fits: those that would are draining".into();
    }
    let mut closest: Vec<(Vec<String>, usize)> = lacks.into_iter().collect();
    closest.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
    let closest: Vec<String> = closest
        .iter()
        .take(3)
        .map(|(m, n)| {
            format!(
                "{n} runner{} {} {}",
                if *n == 1 { "" } else { "s" },
                if *n == 1 { "lacks" } else { "lack" },
                m.join(", ")
            )
        })
        .collect();
    let asks = if q.runs_on.is_empty() { String::new() } else { format!(" with runs_on [{}]", q.runs_on.join(", ")) };
    format!("no connected runner can take this {} job{asks}; closest: {}", q.executor.word(), closest.join("; "))
}

/// A job's environment as its attempt sees it: the pipeline's and job's
/// `env:` and the `VIADUCT_*` variables (never a secret).
pub(crate) fn job_env(
    key: JobKey,
    job: &crate::store::records::JobRecord,
    run: &crate::store::records::RunRecord,
) -> HashMap<String, String> {
    let mut env = job.env.clone();
    let vars = [
        ("CI", "true".to_string()),
        ("VIADUCT", "true".to_string()),
        ("VIADUCT_RUN_ID", key.run.to_string()),
        ("VIADUCT_JOB_ID", key.to_string()),
        ("VIADUCT_JOB_NAME", job.name.clone()),
        ("VIADUCT_JOB_KEY", job.key.clone()),
        ("VIADUCT_ATTEMPT", job.attempt.to_string()),
        ("VIADUCT_PIPELINE", run.pipeline.clone()),
        ("VIADUCT_EVENT", run.source.as_ref().map(|s| s.event.clone()).unwrap_or_default()),
    ];
    env.extend(vars.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(src) = &run.source {
        for (k, v) in [
            ("VIADUCT_REPO", &src.repo),
            ("VIADUCT_REF", &src.r#ref),
            ("VIADUCT_BRANCH", &src.branch),
            ("VIADUCT_TAG", &src.tag),
            ("VIADUCT_COMMIT", &src.commit),
            ("VIADUCT_AUTHOR", &src.author),
            ("VIADUCT_BASE_BRANCH", &src.base_branch),
        ] {
            if !v.is_empty() {
                env.insert(k.to_string(), v.clone());
            }
        }
    }
    env
}

impl super::Engine {
    /// Sends `msg` to the connected runner that could run job `key` (its
    /// labels, executor and trust; taking jobs) and holds the fewest
    /// leases; returns its id.
    pub(crate) fn send_to_fitting(
        &self,
        key: JobKey,
        job: &crate::store::records::JobRecord,
        msg: ServerMessage,
    ) -> Result<String> {
        let mut q = super::queued(key, 0, job, job.pipeline.clone());
        q.plugins = false;
        let st = self.lock();
        let best = st
            .runners
            .iter()
            .filter(|(_, c)| c.takes_jobs() && c.bound_job.is_none() && fits(&q, c))
            .min_by_key(|(id, _)| st.leases.of(id).count());
        let Some((id, conn)) = best else {
            return Err(Error::precondition(format!(
                "no connected runner can run job {key} now (labels {:?}, the {} executor{})",
                q.runs_on,
                q.executor.word(),
                if q.untrusted { ", untrusted runs" } else { "" }
            )));
        };
        conn.tx.send(msg).map_err(|_| Error::precondition(format!("runner {id} just went away: try again")))?;
        Ok(id.clone())
    }
}
