//! `viaduct.v1.Logs`: follow (history, then live) and ranged reads.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use viaduct_proto::{
    StatusWord as _,
    v1::{
        FollowRequest, GetLogRequest, GetLogResponse, LogChunk, LogEvent, StepBoundary, follow_request, log_event,
        logs_server::Logs,
    },
};

use crate::{
    access, convert,
    depot::Depot,
    engine::{
        Engine,
        read::{Scope, StepView},
    },
    error::{Error, Result},
    store::keys::{JobKey, RunId, StepKey},
};

/// Most bytes sent in one LogChunk / returned by one Get: the reply must
/// stay under gRPC's default 4 MiB message limit, which clients enforce.
const MAX_READ: u64 = 4 * 1024 * 1024 - 64 * 1024;
/// Bytes read at a time from a running step's log while following.
const FOLLOW_READ: u64 = 256 * 1024;

/// The Logs service.
pub struct LogsApi {
    engine: Arc<Engine>,
    depot: Arc<Depot>,
}

impl LogsApi {
    /// The service over `engine`, reading packed logs from `depot`.
    pub fn new(engine: Arc<Engine>, depot: Arc<Depot>) -> Self {
        Self { engine, depot }
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<LogEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Logs for LogsApi {
    type FollowStream = FollowStream;

    async fn follow(&self, req: Request<FollowRequest>) -> Result<Response<FollowStream>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        let scope = match &r.scope {
            Some(follow_request::Scope::RunId(id)) => Scope::Run(RunId::parse(id)?),
            Some(follow_request::Scope::JobId(id)) => Scope::Job(JobKey::parse(id)?),
            Some(follow_request::Scope::StepId(id)) => {
                let (job, index) = StepKey::parse_public(id)?;
                Scope::Step(job, index)
            }
            None => return Err(Error::invalid("set one of run_id, job_id or step_id").into()),
        };
        access.require(&self.engine.run_repo(scope.run())?)?;
        // Fail now (NOT_FOUND) rather than in the stream.
        self.engine.scope_steps(scope)?;
        let (tx, rx) = mpsc::channel(64);
        let (engine, depot) = (Arc::clone(&self.engine), Arc::clone(&self.depot));
        let span = tracing::debug_span!("follow", run = %scope.run());
        tokio::spawn(
            async move {
                if let Err(e) = follow(&engine, &depot, scope, &r, &tx).await
                    && !tx.is_closed()
                {
                    let _ = tx.send(Err(e.into())).await;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get(&self, req: Request<GetLogRequest>) -> Result<Response<GetLogResponse>, Status> {
        let access = access::of(&req)?.clone();
        let r = req.into_inner();
        let key = self.engine.step_key(&r.step_id, r.attempt)?;
        access.require(&self.engine.run_repo(key.job.run)?)?;
        let limit = if r.limit == 0 { MAX_READ } else { r.limit.min(MAX_READ) };
        let (chunks, size, complete) = self.depot.read_log(&self.engine, key, r.offset, limit).await?;
        let data = chunks.into_iter().flat_map(|c| c.data).collect();
        Ok(Response::new(GetLogResponse { data, offset: r.offset, size, complete }))
    }
}

/// Where a follower is in one step.
#[derive(Default)]
struct Progress {
    offset: u64,
    started: bool,
    finished: bool,
}

type Tx = mpsc::Sender<Result<LogEvent, Status>>;

/// Streams the scope: each wake-up re-reads the scope's steps and sends what
/// is new. The change counter is marked seen *before* reading, so a change
/// made during a read always causes another pass: nothing is missed.
async fn follow(engine: &Engine, depot: &Depot, scope: Scope, r: &FollowRequest, tx: &Tx) -> Result<()> {
    let mut changes = engine.signals().subscribe_run(scope.run());
    let mut progress: HashMap<StepKey, Progress> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let (steps, done) = engine.scope_steps(scope)?;
        let mut complete = true;
        for s in &steps {
            let p = progress
                .entry(s.key)
                .or_insert_with(|| Progress { offset: start_offset(scope, r, s.key), ..Default::default() });
            if p.finished {
                continue;
            }
            if !s.status.is_terminal() {
                complete = false;
            }
            if s.status == viaduct_proto::v1::Status::Pending && s.size == 0 {
                continue;
            }
            if !p.started {
                p.started = true;
                send(tx, log_event::Event::Step(boundary(s, false))).await?;
            }
            while p.offset < s.size {
                // A finished step's log is final (and may be packed): read
                // it in large pieces.
                let most = if s.status.is_terminal() { MAX_READ } else { FOLLOW_READ };
                let (chunks, _, _) = depot.read_log(engine, s.key, p.offset, most.min(s.size - p.offset)).await?;
                let Some(first) = chunks.first() else { break };
                let (offset, time) = (first.offset, first.time_ms);
                let data: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
                if data.is_empty() {
                    break;
                }
                p.offset = offset + data.len() as u64;
                let chunk = LogChunk {
                    step_id: s.key.to_string(),
                    job_id: s.key.job.to_string(),
                    offset,
                    data,
                    time: convert::timestamp(time),
                    attempt: s.key.attempt,
                };
                send(tx, log_event::Event::Chunk(chunk)).await?;
            }
            if s.status.is_terminal() && p.offset >= s.size {
                p.finished = true;
                send(tx, log_event::Event::Step(boundary(s, true))).await?;
            } else {
                complete = false;
            }
        }
        if r.no_follow {
            return Ok(());
        }
        if done && complete {
            if let Scope::Run(id) = scope {
                // Its end is durable before it is sent; a follower that
                // leaves meanwhile is not waited for.
                let run = tokio::select! {
                    run = engine.get_run_durable_end(id) => run?,
                    () = tx.closed() => return Ok(()),
                };
                send(tx, log_event::Event::Ended(run)).await?;
            }
            return Ok(());
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            () = tx.closed() => return Ok(()),
        }
    }
}

fn start_offset(scope: Scope, r: &FollowRequest, key: StepKey) -> u64 {
    match scope {
        Scope::Step(..) => r.from_offset,
        _ => r.from_offsets.get(&key.to_string()).copied().unwrap_or(0),
    }
}

fn boundary(s: &StepView, finished: bool) -> StepBoundary {
    StepBoundary {
        step_id: s.key.to_string(),
        job_id: s.key.job.to_string(),
        job_name: s.job_name.clone(),
        step_name: s.name.clone(),
        index: s.key.index,
        status: s.status as i32,
        exit_code: if finished { s.exit_code } else { None },
        finished,
        attempt: s.key.attempt,
        message: if finished { s.message.clone() } else { String::new() },
    }
}

/// Sends an event; `Err(Gone)` when the follower went away.
async fn send(tx: &Tx, event: log_event::Event) -> Result<(), Gone> {
    tx.send(Ok(LogEvent { event: Some(event) })).await.map_err(|_| Gone)
}

/// The follower closed its stream.
struct Gone;

impl From<Gone> for Error {
    fn from(_: Gone) -> Self {
        Error::Internal("log follower went away".into())
    }
}
