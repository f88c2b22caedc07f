//! Runner sessions: connect (with resume), heartbeat, disconnect, and the
//! admin operations on runners.
//!
//! # Resume
//! A runner that reconnects lists the job attempts it is still running.
//! For each, the server answers *keep* (with the durable length of each
//! step's log, so the runner resends exactly what is missing) or *drop*
//! (the attempt lost its lease and may already run elsewhere). An attempt
//! that the server has as queued with the same attempt number — assigned
//! just before a server crash, before the assignment reached the disk — is
//! adopted rather than run twice. Jobs the server thinks the runner holds
//! but the runner does not list are lost at once (the runner restarted).

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use tokio::sync::mpsc::UnboundedSender;
use viaduct_proto::{
    ExecutorWord,
    v1::{self, Executor, LogAck, Resume, ServerMessage, Status, Welcome, server_message::Msg},
};

use super::{Conn, Engine, Lease, dispatch::holds};
use crate::{
    convert::{self, LiveRunner},
    error::{Error, Result},
    store::{Store, T, WriteSet, decode, keys::JobKey, records::RunnerRecord},
};

/// An admin's change to a runner (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct RunnerChange {
    /// Labels it may advertise.
    pub labels: Option<Vec<String>>,
    /// Most slots.
    pub slots: Option<u32>,
    /// Executors it may offer.
    pub executors: Option<Vec<Executor>>,
    /// Protected or not.
    pub protected: Option<bool>,
}

/// What a runner says when it connects.
#[derive(Debug, Clone, Default)]
pub struct RunnerHello {
    /// Runner version.
    pub version: String,
    /// Its host name.
    pub hostname: String,
    /// Its labels.
    pub labels: Vec<String>,
    /// Jobs it can run at once.
    pub slots: u32,
    /// Executors it offers.
    pub executors: Vec<Executor>,
    /// Job attempts it is still running, with the grant each came with.
    pub active: Vec<(JobKey, u32, String)>,
    /// It asks to be protected (it can only raise its protection).
    pub protected: bool,
    /// Its process's random id (see `Hello.instance`).
    pub instance: String,
    /// Toolchain labels it found (see `Hello.toolchains`).
    pub toolchains: Vec<String>,
    /// Why it takes no new jobs now (see `Hello.paused`); empty: it takes
    /// jobs.
    pub paused: String,
}

impl Engine {
    /// Registers a connection of `runner_id`, answers its resume list with a
    /// Welcome (the first message sent on `tx`), and dispatches to it.
    /// Returns the connection id.
    pub fn runner_connected(
        &self,
        runner_id: &str,
        hello: RunnerHello,
        tx: UnboundedSender<ServerMessage>,
    ) -> Result<u64> {
        let (conn_id, _) = self.transition(|t| {
            let mut rec: RunnerRecord = t
                .store()
                .get(T::Runners, runner_id.as_bytes())?
                .ok_or_else(|| Error::Unauthenticated(format!("runner {runner_id} was removed; register again")))?;
            let now = self.sh.now_ms();
            pin(&mut rec, runner_id, &hello);
            rec.toolchains = toolchain_labels(runner_id, &hello.toolchains);
            rec.hostname.clone_from(&hello.hostname);
            rec.version.clone_from(&hello.version);
            rec.protected |= hello.protected;
            rec.last_seen_ms = now;
            t.writes().put(T::Runners, runner_id.as_bytes(), &rec);

            let conn_id = t.st.next_conn;
            t.st.next_conn += 1;
            let expires = self.sh.instant() + self.sh.cfg.lease_ttl;
            let mut resume = Vec::with_capacity(hello.active.len());
            for (job, attempt, grant) in &hello.active {
                let keep = if holds(t.st, runner_id, *job, *attempt) {
                    if let Some(l) = t.st.leases.get_mut(job) {
                        l.expires = expires;
                    }
                    true
                } else {
                    self.adopt(t, runner_id, *job, *attempt, grant, expires)?
                };
                let mut logs = Vec::new();
                if keep {
                    // The process that has it now.
                    t.job(*job)?.runner_instance.clone_from(&hello.instance);
                    let steps = t.job_ref(*job)?.steps.len();
                    for i in 0..steps {
                        let sk = job.step(*attempt, super::lifecycle::index(i));
                        logs.push(LogAck {
                            job: Some(job_ref(*job, *attempt)),
                            step_index: sk.index,
                            offset: t.store().logs.len(sk)?,
                        });
                    }
                } else {
                    tracing::warn!(job = %job, attempt, runner = runner_id, "runner resumes a job it no longer holds");
                }
                resume.push(Resume { job: Some(job_ref(*job, *attempt)), keep, logs });
            }
            // An ephemeral runner that comes back with its job (its
            // assignment may not have reached the disk) takes no other.
            let kept = resume.iter().any(|r| r.keep);
            // A runner bound to a job that no longer waits (it ran elsewhere
            // before this runner came up, or was cancelled) has nothing to do.
            let orphaned = match JobKey::parse(&rec.bound_job) {
                Ok(job) if !kept => !matches!(t.job_ref(job)?.status(), Status::Pending | Status::Queued),
                _ => false,
            };
            if rec.ephemeral && (kept || orphaned) && !rec.draining {
                rec.draining = true;
                t.writes().put(T::Runners, runner_id.as_bytes(), &rec);
            }
            let listed: HashSet<(JobKey, u32)> = hello.active.iter().map(|(j, a, _)| (*j, *a)).collect();
            let forgotten: Vec<(JobKey, u32)> = t.st.leases.of(runner_id).filter(|j| !listed.contains(j)).collect();
            for (job, attempt) in forgotten {
                if t.requeue_unstarted(job, attempt, runner_id, &hello.instance)? {
                    continue;
                }
                tracing::warn!(job = %job, attempt, runner = runner_id, "runner came back without the job");
                t.lose_job(job, attempt, &format!("runner {runner_id} restarted and no longer runs it"))?;
            }
            let welcome = ServerMessage {
                msg: Some(Msg::Welcome(Welcome {
                    runner_id: runner_id.to_string(),
                    heartbeat_interval_ms: u32::try_from(self.sh.cfg.heartbeat_interval.as_millis())
                        .unwrap_or(u32::MAX),
                    lease_ttl_ms: u32::try_from(self.sh.cfg.lease_ttl.as_millis()).unwrap_or(u32::MAX),
                    resume,
                    draining: rec.draining,
                })),
            };
            t.send(&tx, welcome);
            t.set_conn(
                runner_id,
                Some(Conn {
                    conn_id,
                    labels: offered_labels(&rec),
                    slots: rec.slots,
                    executors: rec.executors().collect(),
                    draining: rec.draining,
                    protected: rec.protected,
                    ephemeral: rec.ephemeral,
                    bound_job: JobKey::parse(&rec.bound_job).ok(),
                    instance: hello.instance.clone(),
                    tx: tx.clone(),
                    last_seen_ms: now,
                    toolchains_ms: 0,
                    paused: hello.paused.clone(),
                    paused_ms: 0,
                }),
            );
            t.dispatch()?;
            Ok(conn_id)
        })?;
        tracing::info!(runner = runner_id, conn_id, "runner connected");
        Ok(conn_id)
    }

    /// Adopts an attempt the server lost track of (see the module docs) —
    /// only one that was given to this runner: the server's record says so,
    /// or (the assignment never reached the disk) the runner shows the
    /// grant that came with it.
    fn adopt(
        &self,
        t: &mut super::tx::Tx<'_>,
        runner: &str,
        job: JobKey,
        attempt: u32,
        grant: &str,
        expires: Instant,
    ) -> Result<bool> {
        let Some(rec) = t.store().get::<crate::store::records::JobRecord>(T::Jobs, job.key())? else {
            return Ok(false);
        };
        let given = match rec.status() {
            Status::Running => rec.runner_id == runner,
            Status::Queued => super::grant::verify(&self.sh.grant_key, job, attempt, runner, grant),
            _ => false,
        };
        if !given && rec.status() == Status::Queued {
            tracing::warn!(job = %job, attempt, runner, "a runner claims a queued job it was never given: refused");
        }
        let adoptable = rec.attempt == attempt && given && !t.st.leases.contains(&job);
        if !adoptable {
            return Ok(false);
        }
        t.dequeue(job);
        let pipeline = t.run(job.run)?.pipeline.clone();
        let steps = rec.steps.len() as u32;
        let j = t.job(job)?;
        j.status = Status::Running as i32;
        j.runner_id = runner.to_string();
        if j.started_ms == 0 {
            j.started_ms = self.sh.now_ms();
        }
        let log_bytes = super::lease::stored_log(t.store(), job, attempt, steps)?;
        t.set_lease(job, Some(Lease { attempt, runner: runner.to_string(), expires, pipeline, steps, log_bytes }));
        tracing::info!(job = %job, attempt, runner, "adopted a job the runner was already running");
        t.start_deployment(job)?;
        t.rollup(job.run)?;
        Ok(true)
    }

    /// Forgets connection `conn_id` of a runner (a newer one may exist).
    /// Its leases keep running until they lapse or it reconnects.
    pub fn runner_disconnected(&self, runner_id: &str, conn_id: u64) {
        let mut st = self.lock();
        if st.runners.get(runner_id).is_some_and(|c| c.conn_id == conn_id) {
            st.runners.remove(runner_id);
            drop(st);
            self.signals().runners_changed();
            tracing::info!(runner = runner_id, conn_id, "runner disconnected");
            if let Ok(Some(mut rec)) = self.store().get::<RunnerRecord>(T::Runners, runner_id.as_bytes()) {
                rec.last_seen_ms = self.sh.now_ms();
                let mut ws = WriteSet::default();
                ws.put(T::Runners, runner_id.as_bytes(), &rec);
                if let Err(e) = self.store().commit(&ws) {
                    tracing::warn!(error = %e, "could not record last_seen");
                }
            }
        }
    }

    /// A heartbeat on connection `conn_id`: extends the leases of the listed
    /// attempts the runner holds, and returns the attempts it lists but does
    /// not hold (to abandon). Fails when the connection was replaced or the
    /// runner removed: the stream should end.
    pub fn heartbeat(&self, runner_id: &str, conn_id: u64, active: &[(JobKey, u32)]) -> Result<Vec<(JobKey, u32)>> {
        let mut st = self.lock();
        let expires = self.sh.instant() + self.sh.cfg.lease_ttl;
        match st.runners.get_mut(runner_id) {
            Some(c) if c.conn_id == conn_id => c.last_seen_ms = self.sh.now_ms(),
            _ => {
                return Err(Error::Unauthenticated(format!(
                    "runner {runner_id}: this connection is no longer current"
                )));
            }
        }
        let mut stale = Vec::new();
        for (job, attempt) in active {
            match st.leases.get_mut(job) {
                Some(l) if l.attempt == *attempt && l.runner == runner_id => l.expires = expires,
                _ => stale.push((*job, *attempt)),
            }
        }
        Ok(stale)
    }

    /// A connected runner's toolchains changed (it probed them again):
    /// recorded, matched from now on, and dispatch tried.
    pub fn runner_toolchains(&self, runner_id: &str, conn_id: u64, names: &[String]) -> Result<()> {
        let ((), _) = self.transition(|t| {
            let now = self.sh.now_ms();
            match t.st.runners.get(runner_id) {
                Some(c) if c.conn_id == conn_id => {
                    if c.toolchains_ms > 0 && now - c.toolchains_ms < super::TOOLCHAINS_EVERY_MS {
                        tracing::warn!(runner = runner_id, "toolchains changed again within a second: ignored");
                        return Ok(());
                    }
                }
                _ => {
                    return Err(Error::Unauthenticated(format!(
                        "runner {runner_id}: this connection is no longer current"
                    )));
                }
            }
            let mut rec: RunnerRecord = t
                .store()
                .get(T::Runners, runner_id.as_bytes())?
                .ok_or_else(|| Error::Unauthenticated(format!("runner {runner_id} was removed; register again")))?;
            let found = toolchain_labels(runner_id, names);
            if found == rec.toolchains {
                return Ok(());
            }
            rec.toolchains = found;
            t.writes().put(T::Runners, runner_id.as_bytes(), &rec);
            if let Some(c) = t.conn_mut(runner_id) {
                c.labels = offered_labels(&rec);
                c.toolchains_ms = now;
            }
            tracing::info!(runner = runner_id, toolchains = ?rec.toolchains, "runner toolchains changed");
            t.dispatch()
        })?;
        Ok(())
    }

    /// Connection `conn_id` of a runner stopped (`reason`) or started
    /// (empty) taking new jobs by itself.
    pub fn runner_paused(&self, runner_id: &str, conn_id: u64, reason: &str) -> Result<()> {
        let ((), _) = self.transition(|t| {
            let now = self.sh.now_ms();
            match t.st.runners.get(runner_id) {
                Some(c) if c.conn_id == conn_id => {
                    if c.paused == reason {
                        return Ok(());
                    }
                }
                _ => {
                    return Err(Error::Unauthenticated(format!(
                        "runner {runner_id}: this connection is no longer current"
                    )));
                }
            }
            // The latest state always counts; a runner flipping faster than
            // it reads its disk (every 2 s) costs no dispatch — the timer's
            // next one gives it jobs.
            let mut soon = false;
            if let Some(c) = t.conn_mut(runner_id) {
                soon = c.paused_ms > 0 && now - c.paused_ms < super::TOOLCHAINS_EVERY_MS;
                c.paused = reason.to_string();
                c.paused_ms = now;
            }
            if !reason.is_empty() {
                tracing::warn!(runner = runner_id, reason, "runner paused: it takes no new jobs");
                return Ok(());
            }
            tracing::info!(runner = runner_id, "runner takes jobs again");
            if soon { Ok(()) } else { t.dispatch() }
        })?;
        Ok(())
    }

    /// Every registered runner, connected or not: the records read
    /// first, then what is live under the engine's lock once (the leases
    /// grouped in one pass).
    pub fn list_runners(&self) -> Result<Vec<v1::Runner>> {
        let mut records = Vec::new();
        for kv in self.store().tree(T::Runners).iter() {
            let (k, v) = kv?;
            records.push((String::from_utf8_lossy(&k).into_owned(), decode::<RunnerRecord>(T::Runners, &v)?));
        }
        let st = self.lock();
        let mut jobs: HashMap<&str, Vec<String>> = HashMap::new();
        for (job, lease) in st.leases.iter() {
            jobs.entry(lease.runner.as_str()).or_default().push(job.to_string());
        }
        Ok(records
            .into_iter()
            .map(|(id, rec)| {
                let live = st.runners.get(&id).map(|c| {
                    let mut jobs = jobs.remove(id.as_str()).unwrap_or_default();
                    jobs.sort();
                    LiveRunner { jobs, last_seen_ms: c.last_seen_ms, paused: c.paused.clone() }
                });
                convert::runner(&id, &rec, live)
            })
            .collect())
    }

    /// One runner.
    pub fn get_runner(&self, id: &str) -> Result<v1::Runner> {
        let rec: RunnerRecord = self
            .store()
            .get(T::Runners, id.as_bytes())?
            .ok_or_else(|| Error::not_found(format!("runner {id} not found")))?;
        let st = self.lock();
        Ok(convert::runner(id, &rec, live(&st, id)))
    }

    /// Sets or clears draining: a draining runner finishes its jobs and
    /// takes no new ones.
    pub fn drain_runner(&self, id: &str, drain: bool) -> Result<v1::Runner> {
        self.transition(|t| {
            let mut rec: RunnerRecord = t
                .store()
                .get(T::Runners, id.as_bytes())?
                .ok_or_else(|| Error::not_found(format!("runner {id} not found")))?;
            if rec.ephemeral && rec.draining && !drain {
                return Err(Error::precondition(format!(
                    "runner {id} is ephemeral: once drained (it took its one job) it takes no other"
                )));
            }
            rec.draining = drain;
            t.writes().put(T::Runners, id.as_bytes(), &rec);
            if let Some(c) = t.conn_mut(id) {
                c.draining = drain;
            }
            if !drain {
                t.dispatch()?;
            }
            Ok(())
        })?;
        self.get_runner(id)
    }

    /// What an admin changes about a runner: what it may ask for (labels,
    /// slots, executors) and whether it is protected. Its connection keeps
    /// only what it asked for and may still have.
    pub fn update_runner(&self, id: &str, change: RunnerChange) -> Result<v1::Runner> {
        self.transition(|t| {
            let mut rec: RunnerRecord = t
                .store()
                .get(T::Runners, id.as_bytes())?
                .ok_or_else(|| Error::not_found(format!("runner {id} not found")))?;
            if let Some(labels) = change.labels {
                rec.allowed_labels = labels;
                rec.labels.retain(|l| rec.allowed_labels.contains(l));
            }
            if let Some(slots) = change.slots {
                if slots == 0 {
                    return Err(Error::invalid("a runner needs at least 1 slot"));
                }
                rec.max_slots = slots;
                rec.slots = rec.slots.min(slots);
            }
            if let Some(executors) = change.executors {
                rec.allowed_executors = executors.into_iter().map(|e| e as i32).collect();
                rec.executors.retain(|e| rec.allowed_executors.contains(e));
            }
            if let Some(p) = change.protected {
                rec.protected = p;
            }
            t.writes().put(T::Runners, id.as_bytes(), &rec);
            if let Some(c) = t.conn_mut(id) {
                c.labels = offered_labels(&rec);
                c.slots = rec.slots;
                c.executors = rec.executors().collect();
                c.protected = rec.protected;
            }
            tracing::info!(runner = id, labels = ?rec.allowed_labels, slots = rec.max_slots, protected = rec.protected, "runner updated");
            t.dispatch()
        })?;
        self.get_runner(id)
    }

    /// Forgets a runner: revokes its tokens, closes its stream, and treats
    /// its jobs as lost.
    pub fn remove_runner(&self, id: &str, revoke: impl FnOnce(&mut WriteSet) -> Result<()>) -> Result<()> {
        self.transition(|t| {
            if t.store().get::<RunnerRecord>(T::Runners, id.as_bytes())?.is_none() {
                return Err(Error::not_found(format!("runner {id} not found")));
            }
            t.writes().delete(T::Runners, id.as_bytes());
            revoke(t.writes())?;
            t.set_conn(id, None);
            let held: Vec<(JobKey, u32)> = t.st.leases.of(id).collect();
            for (job, attempt) in held {
                t.lose_job(job, attempt, &format!("runner {id} was removed"))?;
            }
            t.dispatch()
        })?;
        tracing::info!(runner = id, "runner removed");
        Ok(())
    }
}

impl Engine {
    /// Ephemeral runners to remove: disconnected, holding no lease, and
    /// either spent (they took their job) or silent for `grace` (they died
    /// before or during it, or never connected).
    pub fn stale_ephemeral_runners(&self, grace: std::time::Duration) -> Result<Vec<String>> {
        let cutoff = self.sh.now_ms() - super::ms(grace);
        let mut out = Vec::new();
        for kv in self.store().tree(T::Runners).iter() {
            let (k, v) = kv?;
            let rec: RunnerRecord = decode(T::Runners, &v)?;
            let id = String::from_utf8_lossy(&k).into_owned();
            if rec.ephemeral && (rec.draining || rec.last_seen_ms < cutoff) && self.ephemeral_runner_idle(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Not connected and holding no lease.
    fn ephemeral_runner_idle(&self, id: &str) -> bool {
        let st = self.lock();
        !st.runners.contains_key(id) && st.leases.of(id).next().is_none()
    }

    /// Whether `id` is an ephemeral runner whose one job is over: given its
    /// job (so draining), disconnected, and holding no lease.
    pub fn ephemeral_runner_spent(&self, id: &str) -> bool {
        let st = self.lock();
        if st.runners.contains_key(id) || st.leases.of(id).next().is_some() {
            return false;
        }
        drop(st);
        matches!(
            self.store().get::<RunnerRecord>(T::Runners, id.as_bytes()),
            Ok(Some(rec)) if rec.ephemeral && rec.draining
        )
    }
}

fn live(st: &super::State, id: &str) -> Option<LiveRunner> {
    let c = st.runners.get(id)?;
    let mut jobs: Vec<String> = st.leases.of(id).map(|(k, _)| k.to_string()).collect();
    jobs.sort();
    Some(LiveRunner { jobs, last_seen_ms: c.last_seen_ms, paused: c.paused.clone() })
}

impl Engine {
    /// The record of `job`, for the runner holding the lease of `attempt`
    /// (anyone else is refused): what a runner may read or write on behalf
    /// of a job — its source, caches, artifacts — is decided from this.
    pub fn leased_job(&self, runner: &str, job: JobKey, attempt: u32) -> Result<crate::store::records::JobRecord> {
        if !holds(&self.lock(), runner, job, attempt) {
            return Err(Error::PermissionDenied(format!("runner {runner} does not hold job {job} attempt {attempt}")));
        }
        self.store().get(T::Jobs, job.key())?.ok_or_else(|| Error::not_found(format!("job {job} not found")))
    }
}

impl Engine {
    /// Whether `runner` holds a lease on a job that checks out repository
    /// `repo` (what lets a runner token clone it).
    pub fn runner_holds_repo(&self, runner: &str, repo: &str) -> Result<bool> {
        let held: Vec<JobKey> = self.lock().leases.of(runner).map(|(job, _)| job).collect();
        for job in held {
            let rec: Option<crate::store::records::JobRecord> = self.store().get(T::Jobs, job.key())?;
            if rec.and_then(|r| r.source).is_some_and(|s| s.repo == repo) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Rewrites the runner records from before executors were an enum (their
/// executors as words), when the engine opens.
pub(super) fn upgrade_runner_records(store: &Store) -> Result<()> {
    let mut ws = WriteSet::default();
    for kv in store.tree(T::Runners).iter() {
        let (k, v) = kv?;
        let mut rec: RunnerRecord = decode(T::Runners, &v)?;
        if rec.executor_words.is_empty() && rec.allowed_executor_words.is_empty() {
            continue;
        }
        let kinds = |words: &[String]| words.iter().filter_map(|w| Executor::from_word(w)).map(|e| e as i32).collect();
        rec.executors = kinds(&rec.executor_words);
        rec.allowed_executors = kinds(&rec.allowed_executor_words);
        rec.executor_words.clear();
        rec.allowed_executor_words.clear();
        ws.put(T::Runners, k, &rec);
    }
    if !ws.is_empty() {
        tracing::info!("runner records upgraded: executors are stored as kinds, not words");
        store.commit(&ws)?;
    }
    Ok(())
}

/// The toolchain labels of `names` a runner may advertise: known
/// toolchains only (so no admin-pinned label can be claimed this way), at
/// most `MAX_LABELS`; the others are dropped, with a warning.
fn toolchain_labels(runner_id: &str, names: &[String]) -> Vec<String> {
    use viaduct_pipeline::toolchains::{MAX_LABELS, is_label};
    let (ok, bad): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| is_label(n));
    if !bad.is_empty() || ok.len() > MAX_LABELS {
        let bad: Vec<String> = bad.iter().take(5).map(|s| s.chars().take(64).collect()).collect();
        tracing::warn!(runner = runner_id, ignored = ?bad, count = ok.len(), "runner advertises toolchain labels it may not: ignored");
    }
    ok.into_iter().take(MAX_LABELS).cloned().collect()
}

/// The labels a runner's connection matches `runs_on` against: those an
/// admin allowed it and its toolchains.
fn offered_labels(rec: &RunnerRecord) -> HashSet<String> {
    rec.labels.iter().chain(&rec.toolchains).cloned().collect()
}

/// Narrows what a connecting runner asks for to what it was registered
/// with (records from before pinning are pinned by this first Hello).
fn pin(rec: &mut RunnerRecord, runner_id: &str, hello: &RunnerHello) {
    if rec.max_slots == 0 {
        rec.allowed_labels.clone_from(&hello.labels);
        rec.max_slots = hello.slots.max(1);
        rec.allowed_executors = hello.executors.iter().map(|e| *e as i32).collect();
    }
    let extra: Vec<&String> = hello.labels.iter().filter(|l| !rec.allowed_labels.contains(l)).collect();
    if !extra.is_empty() {
        tracing::warn!(runner = runner_id, labels = ?extra, "runner asks for labels it was not registered with: ignored (an admin can add them with Runners.Update)");
    }
    rec.labels = hello.labels.iter().filter(|l| rec.allowed_labels.contains(l)).cloned().collect();
    let (offered, extra): (Vec<Executor>, Vec<Executor>) =
        hello.executors.iter().partition(|e| rec.allowed_executors.contains(&(**e as i32)));
    if !extra.is_empty() {
        let extra: Vec<&str> = extra.into_iter().map(Executor::word).collect();
        tracing::warn!(runner = runner_id, executors = ?extra, "runner offers executors it was not registered with: ignored");
    }
    rec.executors = offered.into_iter().map(|e| e as i32).collect();
    if hello.slots > rec.max_slots {
        tracing::warn!(
            runner = runner_id,
            asked = hello.slots,
            max = rec.max_slots,
            "runner asks for more slots than it was registered with: capped"
        );
    }
    rec.slots = hello.slots.clamp(1, rec.max_slots);
}

/// A `JobRef` for (job, attempt).
pub(crate) fn job_ref(job: JobKey, attempt: u32) -> v1::JobRef {
    v1::JobRef { job_id: job.to_string(), attempt, ..Default::default() }
}
