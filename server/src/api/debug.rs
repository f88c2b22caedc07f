//! `viaduct.v1.Debug`: interactive shells in jobs' restored workspaces
//! (see `crate::debug`).
//!
//! [`allowed_job`] and [`open_and_relay`] are the part every way in
//! shares: this gRPC stream and the web UI's WebSocket
//! (`crate::debug_socket`) check the caller, open the session and relay
//! the user's input to the runner the same way.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use viaduct_proto::v1::{
    DebugToRunner, ShellInput, ShellOpen, ShellOutput, debug_server::Debug, debug_to_runner::Msg as ToRunner,
    shell_input::Msg,
};

use crate::{
    access::{self, Access},
    debug::DebugShells,
    engine::Engine,
    error::{Error, Result},
    store::keys::JobKey,
};

/// The Debug service.
pub struct DebugApi {
    engine: Arc<Engine>,
    shells: Arc<DebugShells>,
}

impl DebugApi {
    /// The service over `engine`'s jobs, with `shells`' sessions.
    pub fn new(engine: Arc<Engine>, shells: Arc<DebugShells>) -> Self {
        Self { engine, shells }
    }
}

type OutputStream = Pin<Box<dyn Stream<Item = std::result::Result<ShellOutput, Status>> + Send>>;

/// Bytes one input message may carry.
pub const MAX_INPUT: usize = 64 * 1024;

/// The user's message as the runner's, checked.
fn to_runner(msg: Msg) -> Result<ToRunner> {
    Ok(match msg {
        Msg::Data(d) if d.len() <= MAX_INPUT => ToRunner::Data(d),
        Msg::Data(_) => return Err(Error::TooLarge(format!("at most {MAX_INPUT} bytes of input per message"))),
        Msg::Resize(size) if size.cols <= 1000 && size.rows <= 1000 => ToRunner::Resize(size),
        Msg::Resize(_) => return Err(Error::invalid("a terminal is at most 1000 columns and 1000 rows")),
        Msg::Signal(s) if crate::debug::SIGNALS.contains(&s.as_str()) => ToRunner::Signal(s),
        Msg::Signal(s) => {
            return Err(Error::invalid(format!(
                "`{s}` is not a signal a shell may get ({})",
                crate::debug::SIGNALS.join(", ")
            )));
        }
        Msg::Open(_) => return Err(Error::invalid("the session is open already")),
    })
}

/// The job `job_id` names, if `access`'s principal may open a debug shell
/// on it: the push role on its run's repository (whoever could run code
/// there by pushing it), maintain for a job given secrets
/// ([`Engine::debug_role`]).
pub fn allowed_job(engine: &Engine, access: &Access, job_id: &str) -> Result<JobKey> {
    let job = JobKey::parse(job_id)?;
    access.target(format!("job {job}"));
    access.require_role(engine.debug_role(job)?, &engine.run_repo(job.run)?)?;
    Ok(job)
}

/// Opens `user`'s debug shell on `job` (already allowed: [`allowed_job`])
/// as `open` asks, and relays `inbound` — the user's messages after the
/// opening one, each checked before it reaches the runner; an `Err` is
/// input the way in refused — until it ends or a message is refused: then
/// the runner is told to close the shell (one that never attached is
/// ended here). Returns the session's output: `ShellStarted`, the
/// terminal's output, `ShellEnded` last.
pub fn open_and_relay(
    shells: &Arc<DebugShells>,
    user: &str,
    job: JobKey,
    open: &ShellOpen,
    inbound: impl Stream<Item = Result<Msg>> + Send + 'static,
) -> Result<mpsc::Receiver<std::result::Result<ShellOutput, Status>>> {
    let opened = shells.open(user, job, open)?;
    let (shells, id, input) = (Arc::clone(shells), opened.id, opened.input);
    tokio::spawn(async move {
        let mut inbound = std::pin::pin!(inbound);
        let why = loop {
            match inbound.next().await {
                Some(Ok(m)) => match to_runner(m) {
                    Ok(m) => {
                        if input.send(DebugToRunner { msg: Some(m) }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break format!("refused input: {e}"),
                },
                Some(Err(e)) => break format!("refused input: {e}"),
                None => break "the user left".to_string(),
            }
        };
        let _ = input.send(DebugToRunner { msg: Some(ToRunner::Close(why.clone())) }).await;
        // A runner that never attached hears nothing: end it here.
        shells.end_unattached(&id, &why);
    });
    Ok(opened.output)
}

#[tonic::async_trait]
impl Debug for DebugApi {
    type ShellStream = OutputStream;

    async fn shell(&self, req: Request<Streaming<ShellInput>>) -> std::result::Result<Response<OutputStream>, Status> {
        let access = access::of(&req)?.clone();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Error::invalid("no ShellOpen within 30 s"))??;
        let Some(ShellInput { msg: Some(Msg::Open(open)) }) = first else {
            return Err(Error::invalid("the first message of a debug shell must be ShellOpen").into());
        };
        let job = allowed_job(&self.engine, &access, &open.job_id)?;
        // The stream's messages until it ends or breaks (the user left).
        let inbound = futures_util::stream::unfold(inbound, |mut s| async move {
            loop {
                match s.message().await {
                    Ok(Some(ShellInput { msg: Some(m) })) => return Some((Ok(m), s)),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return None,
                }
            }
        });
        let output = open_and_relay(&self.shells, &access.actor, job, &open, inbound)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(output))))
    }
}
