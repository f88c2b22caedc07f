//! `viaduct.v1.RunnerAgent`: registration and the runner's Connect stream.
//!
//! Per connection, one task reads the runner's messages in order and applies
//! them; an acknowledger task batches the acknowledgements and sends them
//! once the writes they cover are fsynced (one fsync for many reports).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::{FutureExt, Stream};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_stream::{StreamExt, wrappers::UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use viaduct_proto::{
    v1,
    v1::{
        Ack, Artifact, ArtifactsData, CacheData, DebugFromRunner, DebugToRunner, FetchArtifactsRequest,
        FetchSourceRequest, FindReuseRequest, FindReuseResponse, JobSignal, LogAck, RegisterRequest, RegisterResponse,
        RestoreCacheRequest, RestoreSnapshotRequest, RunnerMessage, SaveCacheRequest, SaveCacheResponse,
        SaveSnapshotRequest, SaveSnapshotResponse, ServerMessage, SnapshotData, SourceChunk, UpdateAck,
        UploadArtifactRequest, runner_agent_server::RunnerAgent, runner_message::Msg as In, save_snapshot_request,
        server_message::Msg as Out,
    },
};

use super::transfer::{self, Chunks};
use crate::{
    auth::Auth,
    depot::Depot,
    engine::{
        Engine, RunnerHello, durability,
        reports::{Report, Update, Verdict},
    },
    error::Error,
    store::{Ticket, keys::JobKey},
    triggers::Triggers,
};

/// The RunnerAgent service.
pub struct AgentApi {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    triggers: Arc<Triggers>,
    depot: Arc<Depot>,
    debug: Arc<crate::debug::DebugShells>,
}

impl AgentApi {
    /// The service over `engine`, authenticating with `auth`; source
    /// archives come from `triggers`, caches and artifacts go to `depot`;
    /// debug shells are `debug`'s.
    pub fn new(
        engine: Arc<Engine>,
        auth: Arc<Auth>,
        triggers: Arc<Triggers>,
        depot: Arc<Depot>,
        debug: Arc<crate::debug::DebugShells>,
    ) -> Self {
        Self { engine, auth, triggers, depot, debug }
    }

    /// The record of the job attempt `job`, if `runner` holds it.
    fn leased(
        &self,
        runner: &str,
        job: Option<&viaduct_proto::v1::JobRef>,
    ) -> Result<(JobKey, u32, crate::store::records::JobRecord), Error> {
        let r = job.ok_or_else(|| Error::invalid("which job attempt?"))?;
        let key = JobKey::parse(&r.job_id)?;
        let rec = self.engine.leased_job(runner, key, r.attempt)?;
        Ok((key, r.attempt, rec))
    }
}

enum Pending {
    Log(LogAck),
    Update(UpdateAck),
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

fn job_refs(refs: &[viaduct_proto::v1::JobRef]) -> Result<Vec<(JobKey, u32)>, Error> {
    refs.iter().map(|r| Ok((JobKey::parse(&r.job_id)?, r.attempt))).collect()
}

fn abandon(job: Option<viaduct_proto::v1::JobRef>, reason: &str) -> ServerMessage {
    ServerMessage { msg: Some(Out::Abandon(JobSignal { job, reason: reason.to_string() })) }
}

#[tonic::async_trait]
impl RunnerAgent for AgentApi {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.auth.check_runner_cert(&req)?;
        let access = crate::access::of(&req)?.clone();
        let r = req.into_inner();
        bounded(&[("name", &r.name), ("hostname", &r.hostname)], &r.labels)?;
        not_toolchains(&r.labels)?;
        let (runner_id, runner_token) = self
            .auth
            .register_runner(
                &r.registration_token,
                crate::auth::Registration {
                    executors: r.executors().collect(),
                    ephemeral: r.ephemeral,
                    name: r.name.clone(),
                    labels: r.labels,
                    hostname: r.hostname,
                    protected: r.protected,
                    slots: r.slots,
                },
            )
            .await?;
        tracing::info!(runner = %runner_id, name = %r.name, ephemeral = r.ephemeral, "runner registered");
        self.engine.signals().runners_changed();
        access.target(format!("runner {runner_id}"));
        Ok(Response::new(RegisterResponse { runner_id, runner_token }))
    }

    type FetchSourceStream = Chunks<SourceChunk>;

    async fn fetch_source(
        &self,
        req: Request<FetchSourceRequest>,
    ) -> Result<Response<Self::FetchSourceStream>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let (job, _, rec) = self.leased(&runner, req.get_ref().job.as_ref())?;
        let source = rec.source.ok_or_else(|| Error::not_found(format!("the run of job {job} has no repository")))?;
        let build = self.triggers.repos().archive(&source.repo, &source.commit);
        let (file, total) = self.depot.sources.open(&source.repo, &source.commit, build).await?;
        let stream = transfer::file_stream(file, move |data, first| SourceChunk {
            data,
            total_size: if first { total } else { 0 },
        });
        Ok(Response::new(stream))
    }

    type RestoreCacheStream = Chunks<CacheData>;

    async fn restore_cache(
        &self,
        req: Request<RestoreCacheRequest>,
    ) -> Result<Response<Self::RestoreCacheStream>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let (job, _, rec) = self.leased(&runner, req.get_ref().job.as_ref())?;
        let r = req.into_inner();
        let scope = self.depot.caches.scope_of(job, &rec)?;
        let miss = || -> Chunks<CacheData> { Box::pin(tokio_stream::once(Ok(CacheData::default()))) };
        let Some(found) = self.depot.caches.lookup(&scope, r.kind(), &r.key, &r.prefixes)? else {
            return Ok(Response::new(miss()));
        };
        let file = match self.depot.blobs.open_read(&found.record.digest).await {
            Ok((file, _)) => file,
            Err(Error::NotFound(e)) => {
                tracing::warn!(error = %e, key = %r.key, "a cache entry's blob is missing: treated as a miss");
                return Ok(Response::new(miss()));
            }
            Err(e) => return Err(e.into()),
        };
        let entry = found.record.entry.unwrap_or_default();
        let exact = found.exact;
        let mut head = Some((entry.key, entry.size));
        let stream = transfer::file_stream(file, move |data, _| match head.take() {
            Some((key, size)) => CacheData { found: true, key, exact, size, data },
            None => CacheData { data, ..Default::default() },
        });
        Ok(Response::new(stream))
    }

    async fn save_cache(
        &self,
        req: Request<Streaming<SaveCacheRequest>>,
    ) -> Result<Response<SaveCacheResponse>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        self.engine.check_room()?;
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Error::invalid("empty cache upload"))?;
        let (job, _, rec) = self.leased(&runner, first.job.as_ref())?;
        let scope = self.depot.caches.scope_of(job, &rec)?;
        let kind = first.kind();
        crate::caches::check_key(&first.key)?;
        let writer = self.depot.blobs.writer(self.depot.caches.entry_limit(kind)).await?;
        let blob = transfer::receive(writer, first.data, &mut stream, |m| m.data).await?;
        let stored = self.depot.save_cache(&scope, kind, &first.key, &blob, &job.run.to_string()).await?;
        tracing::info!(job = %job, key = %first.key, size = blob.size, stored, "cache saved");
        Ok(Response::new(SaveCacheResponse { stored, size: blob.size }))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<UploadArtifactRequest>>,
    ) -> Result<Response<Artifact>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        self.engine.check_room()?;
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Error::invalid("empty artifact upload"))?;
        let (job, attempt, rec) = self.leased(&runner, first.job.as_ref())?;
        crate::artifacts::check_name(&first.name)?;
        let room = self.depot.artifacts.room(job, attempt, &first.name)?;
        let one = self.depot.config.max_artifact_bytes;
        let writer = self.depot.blobs.writer(room.min(one)).await?;
        // The job's quota is what stops it (not the size of one file).
        let quota_stops = writer.limit() == room && room < one;
        if quota_stops && first.size > room {
            return Err(crate::artifacts::over_quota(&first.name, job).into());
        }
        let blob = transfer::receive(writer, first.data, &mut stream, |m| m.data).await.map_err(|e| match e {
            Error::TooLarge(_) if quota_stops => crate::artifacts::over_quota(&first.name, job),
            e => e,
        })?;
        if first.size > 0 && blob.size != first.size {
            return Err(Error::invalid(format!(
                "artifact `{}`: {} bytes announced, {} received",
                first.name, first.size, blob.size
            ))
            .into());
        }
        let artifact = self.depot.artifacts.record(job, &rec.name, attempt, &first.name, first.mode, &blob).await?;
        Ok(Response::new(artifact))
    }

    async fn save_snapshot(
        &self,
        req: Request<Streaming<SaveSnapshotRequest>>,
    ) -> Result<Response<SaveSnapshotResponse>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        self.engine.check_room()?;
        let mut stream = req.into_inner();
        let first = stream.message().await?.and_then(|m| m.part);
        let Some(save_snapshot_request::Part::Header(header)) = first else {
            return Err(Error::invalid("a snapshot upload starts with its header").into());
        };
        let (job, attempt, _) = self.leased(&runner, header.job.as_ref())?;
        let key = job.step(attempt, header.step_index);
        let (rec, known, used) = self.engine.snapshot_target(&runner, job, attempt, header.step_index)?;
        let scope = format!("{}\0{}", rec.source.as_ref().map_or("", |s| s.repo.as_str()), rec.pipeline);
        let saved = self.depot.snapshots.receive(&mut stream, (&known, used), &scope).await?;
        let reply = SaveSnapshotResponse {
            manifest_digest: saved.record.manifest.clone(),
            pack_size: saved.record.pack_size,
            pack_digest: saved.pack.clone().unwrap_or_default(),
        };
        tracing::info!(job = %job, attempt, step = header.step_index, entries = saved.entries, new_bytes = saved.record.pack_size, "snapshot saved");
        let new_pack = saved.pack.as_deref();
        self.engine.record_snapshot(&runner, key, (saved.record, new_pack), &header.reuse_key).await?;
        Ok(Response::new(reply))
    }

    async fn find_reuse(&self, req: Request<FindReuseRequest>) -> Result<Response<FindReuseResponse>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let r = req.into_inner();
        let (job, attempt, _) = self.leased(&runner, r.job.as_ref())?;
        let found = self.engine.find_reuse(&runner, job, attempt, r.step_index, &r.key).await?;
        Ok(Response::new(FindReuseResponse {
            found: found.is_some(),
            run_id: found.map(|run| run.to_string()).unwrap_or_default(),
        }))
    }

    type FetchArtifactsStream = Chunks<ArtifactsData>;

    async fn fetch_artifacts(
        &self,
        req: Request<FetchArtifactsRequest>,
    ) -> Result<Response<Self::FetchArtifactsStream>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let r = req.into_inner();
        let (job, _, rec) = self.leased(&runner, r.job.as_ref())?;
        // Only what the job record names: a runner cannot read another
        // job's artifacts by asking.
        if !rec.artifacts_from.contains(&r.from_job) {
            return Err(Error::PermissionDenied(format!(
                "job {job} does not get the artifacts of job {} (not among its artifacts_from)",
                r.from_job
            ))
            .into());
        }
        let from = JobKey::parse(&r.from_job)?;
        let list = self.depot.artifacts.list(from.run, Some(from))?;
        if list.is_empty() {
            return Err(Error::precondition(format!(
                "job {from} has no artifacts (it collected none, or they expired)"
            ))
            .into());
        }
        Ok(Response::new(transfer::artifacts_tar(Arc::clone(&self.depot.blobs), list, |data| ArtifactsData { data })))
    }

    type RestoreSnapshotStream = Chunks<SnapshotData>;

    async fn restore_snapshot(
        &self,
        req: Request<RestoreSnapshotRequest>,
    ) -> Result<Response<Self::RestoreSnapshotStream>, Status> {
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let r = req.into_inner();
        let (_, record) = if r.debug_session.is_empty() {
            let (job, attempt, _) = self.leased(&runner, r.job.as_ref())?;
            self.engine.resume_snapshot(&runner, job, attempt)?
        } else {
            self.debug.snapshot_of(&runner, &r.debug_session)?
        };
        let rx = self.depot.snapshots.stream(&record).await?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type DebugSessionStream = Chunks<DebugToRunner>;

    async fn debug_session(
        &self,
        req: Request<Streaming<DebugFromRunner>>,
    ) -> Result<Response<Self::DebugSessionStream>, Status> {
        use viaduct_proto::v1::debug_from_runner::Msg as FromRunner;
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Error::invalid("no session id within 30 s"))??;
        let Some(DebugFromRunner { msg: Some(FromRunner::SessionId(id)) }) = first else {
            return Err(Error::invalid("a debug session starts with its id").into());
        };
        let attached = self.debug.attach(&runner, &id)?;
        let input = Arc::clone(&self.debug).relay_runner(id, inbound, attached);
        Ok(Response::new(Box::pin(input.map(Ok))))
    }

    type ConnectStream = OutStream;

    async fn connect(&self, req: Request<Streaming<RunnerMessage>>) -> Result<Response<OutStream>, Status> {
        self.auth.check_runner_cert(&req)?;
        let runner = crate::access::of(&req)?.runner()?.to_string();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Error::invalid("no Hello within 30 s"))??;
        let Some(RunnerMessage { msg: Some(In::Hello(h)) }) = first else {
            return Err(Error::invalid("the first message on Connect must be Hello").into());
        };
        let words =
            [("hostname", &h.hostname), ("version", &h.version), ("instance", &h.instance), ("pause", &h.paused)];
        bounded(&words.map(|(what, w)| (what, w.as_str())), &h.labels)?;
        if h.active_jobs.len() > 10_000 {
            return Err(Error::invalid("Hello lists more than 10000 running jobs").into());
        }
        let hello = RunnerHello {
            executors: h.executors().collect(),
            version: h.version,
            hostname: h.hostname,
            labels: h.labels,
            slots: h.slots.max(1),
            active: h
                .active_jobs
                .iter()
                .map(|r| Ok((JobKey::parse(&r.job_id)?, r.attempt, r.grant.clone())))
                .collect::<Result<_, Error>>()?,
            protected: h.protected,
            instance: h.instance,
            toolchains: h.toolchains,
            paused: h.paused,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = self.engine.runner_connected(&runner, hello, tx.clone())?;
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!("runner", runner = %runner, conn);
        tokio::spawn(acknowledge(Arc::clone(&self.engine), ack_rx, tx.clone()).instrument(span.clone()));
        let (engine, auth) = (Arc::clone(&self.engine), Arc::clone(&self.auth));
        tokio::spawn(
            async move {
                let mut batch = Vec::new();
                let mut open = true;
                while open {
                    open = receive(&mut inbound, &mut batch).await;
                    // Steps that may wait for the next flush may as well
                    // wait a moment for the reports that follow them: a job
                    // of short steps then costs a commit per GATHER, not one
                    // per step (each commit is a write of the store).
                    let until = tokio::time::Instant::now() + GATHER;
                    while open && may_gather(&batch) {
                        match tokio::time::timeout_at(until, receive(&mut inbound, &mut batch)).await {
                            Ok(still) => open = still,
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = apply(&engine, &runner, conn, &mut batch, &tx, &ack_tx) {
                        tracing::info!(error = %e, "closing runner stream");
                        break;
                    }
                }
                engine.runner_disconnected(&runner, conn);
                if engine.ephemeral_runner_spent(&runner) {
                    remove_ephemeral(&engine, &auth, &runner, "its one job is done");
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx).map(Ok))))
    }
}

/// Most labels a runner may register or say Hello with.
const MAX_LABELS: usize = 100;
/// Longest label, name, host name or version a runner may send.
const MAX_WORD: usize = 255;

/// Refuses a registration or Hello whose words or labels are out of bounds
/// (they are stored with the runner and shown to people).
fn bounded(words: &[(&str, &str)], labels: &[String]) -> Result<(), Error> {
    if let Some((what, w)) = words.iter().find(|(_, w)| w.len() > MAX_WORD) {
        return Err(Error::invalid(format!("the runner's {what} is {} bytes; the limit is {MAX_WORD}", w.len())));
    }
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!("{} labels; the limit is {MAX_LABELS}", labels.len())));
    }
    if let Some(l) = labels.iter().find(|l| l.is_empty() || l.len() > MAX_WORD) {
        return Err(Error::invalid(format!("a label of {} bytes; labels are 1 to {MAX_WORD} bytes", l.len())));
    }
    Ok(())
}

/// Refuses labels a runner is given (registration, `Runners.Update`) that
/// are toolchain labels: any runner may advertise those itself, so routing
/// by them would be routing by nothing an admin controls.
pub(super) fn not_toolchains(labels: &[String]) -> Result<(), Error> {
    match labels.iter().find(|l| viaduct_pipeline::toolchains::is_label(l)) {
        Some(l) => Err(Error::invalid(format!(
            "`{l}` is a toolchain label: runners advertise it themselves when they find the program, so it cannot \
             be given; route jobs by a label of your own (e.g. `{l}-pool`)"
        ))),
        None => Ok(()),
    }
}

/// Most messages applied as one batch.
const MAX_BATCH: usize = 512;
/// At most how long reports that may wait (see [`may_gather`]) wait for
/// more to apply with them.
const GATHER: Duration = Duration::from_millis(2);

/// Adds the next message of `inbound` to `batch`, then every one already
/// received (up to [`MAX_BATCH`]); `false` once the stream ended or broke.
/// Cancel-safe: a message is taken off the stream only when it is pushed.
async fn receive(inbound: &mut Streaming<RunnerMessage>, batch: &mut Vec<RunnerMessage>) -> bool {
    let mut next = Some(inbound.message().await);
    loop {
        match next {
            Some(Ok(Some(m))) => batch.push(m),
            Some(Ok(None)) => return false,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "runner stream broke");
                return false;
            }
            None => return true,
        }
        if batch.len() >= MAX_BATCH {
            return true;
        }
        next = inbound.message().now_or_never();
    }
}

/// Whether `batch` has state updates, all of steps that may wait for the
/// next flush ([`durability::step_can_wait`]: nobody waits on them now),
/// and room for more.
fn may_gather(batch: &[RunnerMessage]) -> bool {
    let mut any = false;
    for m in batch {
        match &m.msg {
            Some(In::Step(u))
                if v1::Status::try_from(u.status).is_ok_and(|s| durability::step_can_wait(u.step_index, s)) =>
            {
                any = true;
            }
            Some(In::Step(_) | In::Job(_)) => return false,
            _ => {}
        }
    }
    any && batch.len() < MAX_BATCH
}

/// Applies a batch of runner messages (and empties it): log data first, in
/// order, then every state update in one transition. A runner sends a
/// step's log bytes before its final update, so a step's final log size is
/// always complete. An error means the stream must end.
fn apply(
    engine: &Engine,
    runner: &str,
    conn: u64,
    batch: &mut Vec<RunnerMessage>,
    tx: &UnboundedSender<ServerMessage>,
    acks: &UnboundedSender<(Ticket, Pending)>,
) -> Result<(), Error> {
    let stale = |job| {
        let _ = tx.send(abandon(job, "this attempt no longer holds its lease"));
    };
    let mut updates = Vec::new();
    for m in batch.iter() {
        match &m.msg {
            Some(In::Heartbeat(h)) => {
                for (job, attempt) in engine.heartbeat(runner, conn, &job_refs(&h.active_jobs)?)? {
                    stale(Some(crate::engine::job_ref(job, attempt)));
                }
            }
            Some(In::Log(d)) => match engine.log_data(runner, d) {
                Ok(Report::Logged(t, offset)) => {
                    let ack = LogAck { job: d.job.clone(), step_index: d.step_index, offset };
                    let _ = acks.send((t, Pending::Log(ack)));
                }
                Ok(Report::Stale) => stale(d.job.clone()),
                Err(e) => tracing::warn!(error = %e, "bad log data from runner"),
            },
            Some(In::Step(u)) => updates.push(Update::Step(u)),
            Some(In::Job(u)) => updates.push(Update::Job(u)),
            Some(In::Hello(_)) => tracing::warn!("Hello may only be sent first; ignored"),
            Some(In::Toolchains(t)) => engine.runner_toolchains(runner, conn, &t.names)?,
            Some(In::Pause(p)) => {
                bounded(&[("pause", &p.reason)], &[])?;
                engine.runner_paused(runner, conn, &p.reason)?;
            }
            None => {}
        }
    }
    if !updates.is_empty() {
        let (verdicts, ticket) = engine.apply_updates(runner, &updates)?;
        for (u, v) in updates.iter().zip(verdicts) {
            let (job, step_index, status) = match u {
                Update::Step(s) => (s.job.clone(), s.step_index, s.status),
                Update::Job(j) => (j.job.clone(), 0, j.status),
            };
            match v {
                Verdict::Accepted => {
                    let _ = acks.send((ticket, Pending::Update(UpdateAck { job, step_index, status })));
                }
                Verdict::Stale => stale(job),
                Verdict::Invalid(e) => tracing::warn!(error = %e, "bad update from runner"),
            }
        }
    }
    batch.clear();
    Ok(())
}

/// Sends acknowledgements once durable, batching everything that queued up
/// while the previous fsync ran.
async fn acknowledge(
    engine: Arc<Engine>,
    mut rx: UnboundedReceiver<(Ticket, Pending)>,
    tx: UnboundedSender<ServerMessage>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let newest = batch.iter().map(|(t, _)| *t).max().expect("batch is not empty");
        engine.wait_durable(newest).await;
        let mut ack = Ack::default();
        for (_, p) in batch {
            match p {
                Pending::Log(l) => {
                    // Keep only the furthest offset per step.
                    match ack.logs.iter_mut().find(|a| a.job == l.job && a.step_index == l.step_index) {
                        Some(a) => a.offset = a.offset.max(l.offset),
                        None => ack.logs.push(l),
                    }
                }
                Pending::Update(u) => ack.updates.push(u),
            }
        }
        if tx.send(ServerMessage { msg: Some(Out::Ack(ack)) }).is_err() {
            break;
        }
    }
}

/// Removes ephemeral runner `id` and revokes its token.
fn remove_ephemeral(engine: &Engine, auth: &Auth, id: &str, why: &str) {
    match engine.remove_runner(id, |ws| auth.revoke_runner(id, ws)) {
        Ok(()) => {
            auth.revoked();
            tracing::info!(runner = id, why, "ephemeral runner removed");
        }
        Err(e) => tracing::warn!(runner = id, error = %e, "could not remove an ephemeral runner"),
    }
}

/// How long an ephemeral runner may stay silent before it is taken for
/// dead (it never connected, or died before reporting its job).
const EPHEMERAL_GRACE: Duration = Duration::from_secs(600);

/// Every minute, removes the ephemeral runners that will not come back
/// (see [`Engine::stale_ephemeral_runners`]): those that died mid-job once
/// their job was retried elsewhere, and those that never connected.
pub fn spawn_ephemeral_sweeper(engine: Arc<Engine>, auth: Arc<Auth>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match engine.stale_ephemeral_runners(EPHEMERAL_GRACE) {
                Ok(ids) => {
                    for id in ids {
                        remove_ephemeral(&engine, &auth, &id, "gone without reporting back");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list ephemeral runners"),
            }
        }
    });
}
