//! `viaduct.v1.Debug`: interactive shells in jobs' restored workspaces
//! (see `crate::debug`).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use viaduct_proto::v1::{
    DebugToRunner, Role, ShellInput, ShellOutput, debug_server::Debug, debug_to_runner::Msg as ToRunner,
    shell_input::Msg,
};

use crate::{access, debug::DebugShells, engine::Engine, error::Error, store::keys::JobKey};

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

type OutputStream = Pin<Box<dyn Stream<Item = Result<ShellOutput, Status>> + Send>>;

/// Bytes one input message may carry.
const MAX_INPUT: usize = 64 * 1024;

/// The user's message as the runner's, checked.
fn to_runner(msg: Msg) -> Result<ToRunner, Error> {
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

#[tonic::async_trait]
impl Debug for DebugApi {
    type ShellStream = OutputStream;

    async fn shell(&self, req: Request<Streaming<ShellInput>>) -> Result<Response<OutputStream>, Status> {
        let access = access::of(&req)?.clone();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Error::invalid("no ShellOpen within 30 s"))??;
        let Some(ShellInput { msg: Some(Msg::Open(open)) }) = first else {
            return Err(Error::invalid("the first message of a debug shell must be ShellOpen").into());
        };
        let job = JobKey::parse(&open.job_id)?;
        access.target(format!("job {job}"));
        access.require_role(Role::Push, &self.engine.run_repo(job.run)?)?;
        let opened = self.shells.open(&access.actor, job, &open)?;
        let (shells, id, input) = (Arc::clone(&self.shells), opened.id.clone(), opened.input);
        tokio::spawn(async move {
            let why = loop {
                match inbound.message().await {
                    Ok(Some(ShellInput { msg: Some(m) })) => match to_runner(m) {
                        Ok(m) => {
                            if input.send(DebugToRunner { msg: Some(m) }).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => break format!("refused input: {e}"),
                    },
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break "the user left".to_string(),
                }
            };
            let _ = input.send(DebugToRunner { msg: Some(ToRunner::Close(why.clone())) }).await;
            // A runner that never attached hears nothing: end it here.
            shells.end_unattached(&id, &why);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(opened.output))))
    }
}
